# farmdns-agent, one policy shared by every node of service "ws".
#
#   GET  /v1/agent/self                     agent read: the node name, when agent.yaml
#                                           leaves service.node unset
#   PUT  /v1/agent/service/register,        service "ws" write (only with
#        /deregister, /maintenance,         service.register: true, and for the drain)
#        /v1/agent/check/update (TTL)
#   GET  /v1/agent/checks                   service "ws" read, node read (results are filtered)
#   PUT, DELETE /v1/kv/farmdns/load/ws/...  key write
#
# Trade-off. A Consul rule cannot say "the node this token belongs to" inside a key
# path: node identities and the built-in templated policies (builtin/service,
# builtin/node) grant service and node rights, never KV. So with this one shared
# policy any node may overwrite any other node's load report; a compromised node could
# make the rest of the farm look full and draw every new client. Where that matters,
# give each node its own token with farmdns-agent-node1.policy.hcl instead (one policy
# per node, created when the node is provisioned). Either way a node can register or
# drain any "ws" instance: service rules are per service name, not per node.

agent_prefix "" {
  policy = "read"
}

service "ws" {
  policy = "write"
}

node_prefix "" {
  policy = "read"
}

key_prefix "farmdns/load/ws/" {
  policy = "write"
}
