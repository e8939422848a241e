# farmdns-agent on node1 only: farmdns-agent.policy.hcl narrowed to one node, so
# this node's token can write its own load reports and nobody else's. Create one per
# node when provisioning it:
#
#   sed 's/node1/node2/g' farmdns-agent-node1.policy.hcl > node2.hcl
#   consul acl policy create -name farmdns-agent-node2 -rules @node2.hcl
#   consul acl token create -description "farmdns-agent node2" -policy-name farmdns-agent-node2
#
# The trailing slash matters: "farmdns/load/ws/node1" without it would also match
# node10, node11, ...

agent "node1" {
  policy = "read"
}

service "ws" {
  policy = "write"
}

node "node1" {
  policy = "read"
}

key_prefix "farmdns/load/ws/node1/" {
  policy = "write"
}
