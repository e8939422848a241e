package health

import (
	"cmp"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// healthEntry is the part of one /v1/health/service entry the watcher uses.
// Decoding into it instead of api.ServiceEntry skips the dozens of fields
// (proxy, connect, weights, check definitions...) nobody reads here: at
// 50,000 instances the reflective decode of the full entries was most of
// the watcher's CPU (health/MEASURED.md).
type healthEntry struct {
	Node    *struct{ Node, Address string }
	Service *struct {
		ID, Address string
		Port        int
		Tags        []string
		Meta        map[string]string
	}
	Checks []checkState
}

// checkState is the part of a health check that decides a target's health.
type checkState struct{ CheckID, Status string }

// healthService reads /v1/health/service/<name> as Health().Service(name,
// "", false, q) does, through the same client (token, TLS, datacenter,
// stale), decoding only the fields in healthEntry.
func healthService(c *api.Client, name string, q *api.QueryOptions) ([]healthEntry, *api.QueryMeta, error) {
	var out []healthEntry
	meta, err := c.Raw().Query("/v1/health/service/"+name, &out, q)
	return out, meta, err
}

// instancesFromHealth reduces a /v1/health/service answer for service,
// sorted by node then service ID so that equal content compares equal.
func instancesFromHealth(entries []healthEntry, loadPrefix, service string) []instance {
	out := make([]instance, 0, len(entries))
	for _, e := range entries {
		if e.Node == nil || e.Service == nil {
			continue
		}
		in := instance{
			node: e.Node.Node, nodeAddr: e.Node.Address,
			id: e.Service.ID, addr: e.Service.Address, port: e.Service.Port,
			tags: e.Service.Tags, meta: e.Service.Meta,
		}
		in.health, in.draining = aggregate(e.Checks, e.Service.ID)
		in.loadKey = LoadKey(loadPrefix, service, in.node, in.id)
		out = append(out, in)
	}
	slices.SortFunc(out, func(a, b instance) int {
		return cmp.Or(strings.Compare(a.node, b.node), strings.Compare(a.id, b.id))
	})
	return out
}
