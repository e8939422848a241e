# farmdns, the DNS server: read-only, and only what its watcher reads.
#
#   GET /v1/health/service/<service>     service read; node read for the node's checks,
#                                        address and maintenance state
#   GET /v1/kv/farmdns/load/?recurse     key read (read includes list, so this works
#                                        with acl.enable_key_list_policy too)
#
# Name every service a pool of farmdns.yaml uses (service, and lb_service in shards
# mode). service_prefix "" read would also work, but would show farmdns the whole
# catalog. Change the key prefix if the config changes the load prefix.

service "ws" {
  policy = "read"
}

service "ws-lb" {
  policy = "read"
}

node_prefix "" {
  policy = "read"
}

key_prefix "farmdns/load/" {
  policy = "read"
}
