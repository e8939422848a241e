package health

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/hashicorp/consul/api"
)

// Catalog is an immutable view of one datacenter's Consul catalog, as much of
// it as Consul's DNS interface reads: nodes with their addresses and meta,
// service instances with their checks. It is built whole and never changed,
// so a DNS answer can read it without locks.
type Catalog struct {
	// Datacenter is the catalog's datacenter, lower case.
	Datacenter string
	// Index is Consul's raft index when the view was read; it serves as the
	// SOA serial.
	Index uint64
	// Nodes holds every node by lower-case name: Consul matches node names
	// without regard to case.
	Nodes map[string]*CatalogNode
	// Services holds every service's instances, critical ones included, by
	// lower-case service name; in a Partial view, only the loaded ones.
	Services map[string][]*CatalogInstance
	// Partial says Services holds only the services asked for (a
	// CatalogWatcher's view); Listed then names every service that exists.
	Partial bool
	// Listed holds the lower-case name of every service in the catalog's
	// service list, when Partial.
	Listed map[string]struct{}
	// ips holds every address of the view parsed once (see IP).
	ips map[string]net.IP
}

// IP returns addr parsed as an IP address, or nil for a hostname; from the
// view's own table when it has one, as answers ask for every record. The
// returned slice is shared: never modify it.
func (c *Catalog) IP(addr string) net.IP {
	if ip, ok := c.ips[addr]; ok {
		return ip
	}
	if addr == "" {
		// Asked for every instance without an address of its own; the
		// table leaves it out.
		return nil
	}
	return net.ParseIP(addr)
}

// ParseIPs fills the table IP reads. Call it once the view is complete,
// before it is shared; a view without it parses at each IP call.
func (c *Catalog) ParseIPs() {
	c.ips = make(map[string]net.IP)
	add := func(addrs ...string) {
		for _, a := range addrs {
			if _, ok := c.ips[a]; !ok && a != "" {
				c.ips[a] = net.ParseIP(a)
			}
		}
	}
	for _, n := range c.Nodes {
		add(n.Address, n.LANv4, n.LANv6)
	}
	for _, in := range c.Services {
		for _, i := range in {
			add(i.Address, i.LANv4, i.LANv6, i.Node.Address, i.Node.LANv4, i.Node.LANv6)
		}
	}
}

// Loaded reports whether the view can answer for service: it is loaded, or
// the view is whole, or the service does not exist.
func (c *Catalog) Loaded(service string) bool {
	if !c.Partial {
		return true
	}
	if _, ok := c.Services[service]; ok {
		return true
	}
	_, listed := c.Listed[service]
	return !listed
}

// CatalogNode is a node as Consul's DNS interface sees it.
type CatalogNode struct {
	// Name is the node name as registered.
	Name string
	// Address is the node address: an IP or a hostname.
	Address string
	// LANv4 and LANv6 are the node's lan_ipv4 and lan_ipv6 tagged addresses,
	// which Consul prefers to Address when a query asks for that family.
	LANv4, LANv6 string
	// Meta is the node meta, answered as TXT records.
	Meta map[string]string
}

// CatalogInstance is one service instance with the statuses of every check
// that applies to it: its own and its node's.
type CatalogInstance struct {
	// Node is the instance's node.
	Node *CatalogNode
	// ID and Service are the service ID and name as registered.
	ID, Service string
	// Address is the service address; empty means the node's.
	Address string
	// LANv4 and LANv6 are the service's lan_ipv4 and lan_ipv6 tagged
	// addresses.
	LANv4, LANv6 string
	// Port is the service port.
	Port int
	// Tags are the service tags as registered.
	Tags []string
	// Checks are the statuses (api.HealthPassing, ...) of the instance's
	// service checks and of its node's checks.
	Checks []string
}

// Status aggregates the instance's checks the way Consul's health filters do:
// critical (maintenance is a critical check) before warning before passing.
// An unknown status counts as critical.
func (in *CatalogInstance) Status() HealthState {
	h := HealthPassing
	for _, c := range in.Checks {
		switch c {
		case api.HealthPassing:
		case api.HealthWarning:
			h = HealthWarning
		default:
			return HealthCritical
		}
	}
	return h
}

// HasTag reports whether the instance carries tag, compared without regard
// to case as Consul's tag filter does.
func (in *CatalogInstance) HasTag(tag string) bool {
	for _, t := range in.Tags {
		if strings.EqualFold(t, tag) {
			return true
		}
	}
	return false
}

// ReadCatalog reads the whole catalog once: the node list, the service list,
// and every service's instances with their checks. It is the simple,
// complete read; it costs one request per service.
func ReadCatalog(ctx context.Context, client *api.Client) (*Catalog, error) {
	return readCatalog(ctx, client, false)
}

func readCatalog(ctx context.Context, client *api.Client, stale bool) (*Catalog, error) {
	q := (&api.QueryOptions{AllowStale: stale}).WithContext(ctx)
	nodes, meta, err := client.Catalog().Nodes(q)
	if err := catalogError("nodes", meta, err); err != nil {
		return nil, err
	}
	cat := &Catalog{
		Index:    meta.LastIndex,
		Nodes:    make(map[string]*CatalogNode, len(nodes)),
		Services: make(map[string][]*CatalogInstance),
	}
	for _, n := range nodes {
		cat.Datacenter = strings.ToLower(n.Datacenter)
		cn := &CatalogNode{
			Name: n.Node, Address: n.Address, Meta: n.Meta,
			LANv4: n.TaggedAddresses["lan_ipv4"], LANv6: n.TaggedAddresses["lan_ipv6"],
		}
		cat.Nodes[strings.ToLower(n.Node)] = cn
	}
	if cat.Datacenter == "" {
		dc, err := agentDatacenter(client)
		if err != nil {
			return nil, err
		}
		cat.Datacenter = dc
	}
	names, meta, err := client.Catalog().Services(q)
	if err := catalogError("services", meta, err); err != nil {
		return nil, err
	}
	cat.Index = max(cat.Index, meta.LastIndex)
	for name := range names {
		entries, meta, err := client.Health().Service(name, "", false, q)
		if err := catalogError("service "+name, meta, err); err != nil {
			return nil, err
		}
		cat.Index = max(cat.Index, meta.LastIndex)
		cat.Services[strings.ToLower(name)] = catalogInstances(cat, entries)
	}
	cat.ParseIPs()
	return cat, nil
}

// catalogError wraps a read's error; a read the token may not fully see is
// an error too, since a partial view would answer NXDOMAIN for what exists.
func catalogError(what string, meta *api.QueryMeta, err error) error {
	if err != nil {
		return fmt.Errorf("health: read catalog %s: %w", what, consulError(err))
	}
	if meta != nil && meta.ResultsFilteredByACLs {
		return fmt.Errorf("health: read catalog %s: consul filtered the results by ACLs: the token lacks node:read or service:read", what)
	}
	return nil
}

// catalogInstances converts health entries, linking each to the node in cat
// (the health endpoint carries its own copy of the node; a node registered
// between the two reads gets its own CatalogNode).
func catalogInstances(cat *Catalog, entries []*api.ServiceEntry) []*CatalogInstance {
	out := make([]*CatalogInstance, 0, len(entries))
	for _, e := range entries {
		node := cat.Nodes[strings.ToLower(e.Node.Node)]
		if node == nil {
			node = &CatalogNode{
				Name: e.Node.Node, Address: e.Node.Address, Meta: e.Node.Meta,
				LANv4: e.Node.TaggedAddresses["lan_ipv4"], LANv6: e.Node.TaggedAddresses["lan_ipv6"],
			}
		}
		in := &CatalogInstance{
			Node: node, ID: e.Service.ID, Service: e.Service.Service,
			Address: e.Service.Address, Port: e.Service.Port, Tags: e.Service.Tags,
		}
		if a, ok := e.Service.TaggedAddresses["lan_ipv4"]; ok {
			in.LANv4 = a.Address
		}
		if a, ok := e.Service.TaggedAddresses["lan_ipv6"]; ok {
			in.LANv6 = a.Address
		}
		for _, c := range e.Checks {
			in.Checks = append(in.Checks, c.Status)
		}
		out = append(out, in)
	}
	return out
}

func agentDatacenter(client *api.Client) (string, error) {
	self, err := client.Agent().Self()
	if err != nil {
		return "", fmt.Errorf("health: read agent datacenter: %w", err)
	}
	dc, _ := self["Config"]["Datacenter"].(string)
	return strings.ToLower(dc), nil
}
