package consuldns_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

// agentDNSConfig is Consul's DNS configuration for the differential test,
// written out although most of it is Consul's default, so the farmdns side
// visibly matches it.
const agentDNSConfig = `domain = "consul."
dns_config {
  node_ttl = "0s"
  a_record_limit = 0
  udp_answer_limit = 3
  enable_truncate = false
  only_passing = false
  enable_additional_node_meta_txt = true
  soa { refresh = 3600, retry = 600, expire = 86400, min_ttl = 0 }
}`

// diffNode is a node of the test catalog and its service instances.
type diffNode struct {
	name, addr string
	meta       map[string]string
	nodeCheck  string // status of a node-level check; "" for none
	services   []diffService
}

type diffService struct {
	id, name, addr string
	port           int
	tags           []string
	status         string // the service check's status
}

// diffCatalog covers what the issue lists: tags (one in another case),
// warning and critical checks, a node-level critical check, maintenance, an
// IPv6 service address, an IPv6-only node, hostnames for a service and a
// node, two instances on one node, node meta with rfc1035- and awkward keys.
var diffCatalog = []diffNode{
	{name: "n1", addr: "10.0.0.1", meta: map[string]string{"rack": "r1", "rfc1035-raw": "raw text", " odd=key ": "v`1"}, services: []diffService{
		{id: "web-1", name: "web", port: 8080, tags: []string{"primary", "v1", "a.b"}},
		{id: "web-2", name: "web", port: 8081, tags: []string{"v2"}},
		{id: "db-1", name: "db", port: 5432, status: api.HealthWarning},
		{id: "api-1", name: "api", port: 9000, status: api.HealthMaint},
	}},
	{name: "n2", addr: "10.0.0.2", services: []diffService{
		{id: "web-3", name: "web", addr: "10.0.1.3", port: 8080, tags: []string{"Primary"}, status: api.HealthWarning},
	}},
	{name: "n3", addr: "10.0.0.3", services: []diffService{
		{id: "web-4", name: "web", port: 8080, status: api.HealthCritical},
	}},
	{name: "n4", addr: "10.0.0.4", nodeCheck: api.HealthCritical, services: []diffService{
		{id: "web-5", name: "web", port: 8080},
	}},
	{name: "n5", addr: "10.0.0.5", services: []diffService{
		{id: "web-6", name: "web", addr: "2001:db8::6", port: 8080},
		{id: "v6addr-1", name: "v6addr", addr: "2001:db8::6", port: 80},
	}},
	{name: "n6", addr: "2001:db8::7", meta: map[string]string{"zone": "b"}, services: []diffService{
		{id: "web-7", name: "web", port: 8080},
		{id: "v6only-1", name: "v6only", port: 80},
	}},
	{name: "n7", addr: "10.0.0.8", services: []diffService{
		{id: "ext-1", name: "ext", addr: "example.com", port: 443},
		{id: "web-8", name: "web", addr: "web.example.net", port: 8443, tags: []string{"external"}},
		{id: "self-1", name: "self", addr: "10.0.0.8", port: 80},
	}},
	{name: "hostnode", addr: "host.example.org", services: []diffService{
		{id: "hn-1", name: "hn", port: 80},
	}},
	{name: "n9", addr: "10.0.0.9", services: []diffService{
		// A hostname in the domain is chased; one naming the question
		// itself means the node's address.
		{id: "alias-1", name: "alias", addr: "db.service.consul", port: 80},
		{id: "selfname-1", name: "selfname", addr: "selfname.service.consul.", port: 80},
	}},
}

// bigInstances is how many one-instance nodes the "big" service has: enough
// that its answers overflow 1232 octets, so Consul trims by size.
const bigInstances = 100

func init() {
	for i := range bigInstances {
		diffCatalog = append(diffCatalog, diffNode{
			name: fmt.Sprintf("big%03d", i), addr: fmt.Sprintf("10.1.%d.%d", i/200, i%200+1),
			meta:     map[string]string{"i": fmt.Sprint(i)},
			services: []diffService{{id: fmt.Sprintf("big-%d", i), name: "big", port: 7000 + i}},
		})
	}
}

func registerDiffCatalog(t *testing.T, a *consultest.Agent) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wo := (&api.WriteOptions{}).WithContext(ctx)
	for _, n := range diffCatalog {
		for _, s := range n.services {
			status := s.status
			if status == "" {
				status = api.HealthPassing
			}
			checkID := "service:" + s.id
			if status == api.HealthMaint {
				// What `consul maint` writes: a critical check.
				status, checkID = api.HealthCritical, "_service_maintenance:"+s.id
			}
			_, err := a.Client.Catalog().Register(&api.CatalogRegistration{
				Node: n.name, Address: n.addr, NodeMeta: n.meta,
				Service: &api.AgentService{ID: s.id, Service: s.name, Address: s.addr, Port: s.port, Tags: s.tags},
				Check:   &api.AgentCheck{Node: n.name, CheckID: checkID, Name: checkID, Status: status, ServiceID: s.id},
			}, wo)
			if err != nil {
				t.Fatalf("register %s/%s: %v", n.name, s.id, err)
			}
		}
		if n.nodeCheck != "" {
			a.SetCheck(t, n.name, "", "node-health", n.nodeCheck)
		}
	}
}

// waitAgentSynced waits until the agent has synced its own node's tagged
// addresses and meta into the catalog, which it does shortly after it
// becomes leader: a catalog read before that misses them.
func waitAgentSynced(t *testing.T, a *consultest.Agent) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		n, _, err := a.Client.Catalog().Node(a.NodeName, nil)
		if err == nil && n != nil && n.Node != nil && len(n.Node.TaggedAddresses) > 0 {
			if _, ok := n.Node.Meta["consul-network-segment"]; ok {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent node %s not synced: %v", a.NodeName, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// diffNames are the name forms the issue lists; %s is the agent's node.
var diffNames = []string{
	// services, tags, case, datacenters
	"web.service.consul.", "WeB.SeRvIcE.CoNsUl.", "web.service.dc1.consul.", "web.service.DC1.consul.",
	"web.service.dc1.dc.consul.", "web.service.dc2.consul.", "web.service.x.peer.consul.",
	"web.service.a.b.c.consul.", "primary.web.service.consul.", "PRIMARY.web.service.consul.",
	"v1.web.service.consul.", "nosuchtag.web.service.consul.", "external.web.service.consul.",
	"db.service.consul.", "api.service.consul.", "ext.service.consul.", "v6only.service.consul.", "v6addr.service.consul.",
	"self.service.consul.", "hn.service.consul.", "alias.service.consul.", "selfname.service.consul.",
	"SelfName.service.consul.", "big.service.consul.", "a.b.web.service.consul.", "nosuch.service.consul.", "consul.service.consul.",
	// RFC 2782 forms
	"_web._tcp.service.consul.", "_web._primary.service.consul.", "_web._tcp.service.dc1.consul.",
	"_web._tcp.consul.", "_web._tcp.dc1.consul.", "_WEB._TCP.consul.", "_web.service.consul.",
	// nodes
	"n1.node.consul.", "N1.NODE.dc1.consul.", "n6.node.consul.", "hostnode.node.consul.",
	"nosuch.node.consul.", "n1.node.dc2.consul.", "%s.node.consul.",
	// addr
	"0a000001.addr.consul.", "0A000001.addr.dc1.consul.", "20010db8000000000000000000000006.addr.consul.",
	"zz000001.addr.consul.", "0a0001.addr.consul.", "x.0a000001.addr.consul.",
	// other keywords and none
	"web.connect.consul.", "web.ingress.consul.", "web.virtual.consul.", "web.query.consul.",
	"_web._tcp.query.consul.", "foo.bar.consul.", "consul.", "service.consul.", "node.consul.",
}

var diffTypes = []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeSRV, dns.TypeTXT, dns.TypeANY, dns.TypeMX, dns.TypeSOA, dns.TypeNS}

// transport is how a question travels: the network and the EDNS buffer
// (0 for no EDNS).
type transport struct {
	tcp  bool
	edns uint16
	ecs  bool // with an EDNS client subnet option
	// odd flips the header flags a client may set: RD off, CD and AD on,
	// and the DO bit with EDNS.
	odd bool
}

func (tr transport) String() string {
	proto := "udp"
	if tr.tcp {
		proto = "tcp"
	}
	if tr.edns == 0 {
		return proto
	}
	if tr.ecs {
		return fmt.Sprintf("%s/edns%d+ecs", proto, tr.edns)
	}
	if tr.odd {
		return fmt.Sprintf("%s/edns%d+do,cd,ad,-rd", proto, tr.edns)
	}
	return fmt.Sprintf("%s/edns%d", proto, tr.edns)
}

var diffTransports = []transport{{}, {edns: 512}, {edns: 1232}, {tcp: true}, {edns: 1232, ecs: true}, {edns: 4096, odd: true}}

// TestConsulDifferential asks a real Consul agent and the core the same
// questions about the same catalog and requires the same replies: rcode,
// every header flag, the question as sent, and each section as a multiset of
// records, SRV weights and SOA serials aside. Where Consul trims a UDP
// answer after its random shuffle, the core must keep as many answers, each
// one Consul gives over TCP.
func TestConsulDifferential(t *testing.T) {
	t.Run("defaults", func(t *testing.T) {
		runDifferential(t, agentDNSConfig, consuldns.Config{Domain: "consul."}, diffNames)
	})
	// Consul gets the alt domain's SOA wrong for its apex and for names not
	// in lower case; those are unit tests, not asked here.
	t.Run("alt_domain,only_passing,ttls", func(t *testing.T) {
		hcl := `domain = "consul."
alt_domain = "alt.test."
dns_config {
  node_ttl = "5s"
  service_ttl = { "*" = "7s", "d*" = "9s", "web" = "3s", "we*" = "4s" }
  only_passing = true
  soa { refresh = 100, retry = 20, expire = 1000, min_ttl = 3 }
}`
		cfg := consuldns.Config{
			Domain: "consul.", AltDomain: "alt.test.", NodeTTL: 5 * time.Second,
			ServiceTTLs: map[string]time.Duration{"*": 7 * time.Second, "d*": 9 * time.Second, "web": 3 * time.Second, "we*": 4 * time.Second},
			OnlyPassing: true, SOA: consuldns.SOAConfig{Refresh: 100, Retry: 20, Expire: 1000, MinTTL: 3},
		}
		runDifferential(t, hcl, cfg, altNames)
	})
}

// altNames mixes names under both domains; alt names are in lower case.
var altNames = []string{
	"web.service.consul.", "db.service.consul.", "_web._tcp.consul.", "n1.node.consul.",
	"web.service.alt.test.", "db.service.alt.test.", "primary.web.service.dc1.alt.test.",
	"_web._tcp.service.alt.test.", "_web._tcp.alt.test.", "n1.node.alt.test.", "n1.node.dc1.alt.test.",
	"0a000001.addr.alt.test.", "20010db8000000000000000000000006.addr.dc1.alt.test.",
	"nosuch.service.alt.test.", "foo.alt.test.", "service.alt.test.", "alias.service.alt.test.",
	"hn.service.alt.test.", "ext.service.alt.test.", "big.service.alt.test.", "WEB.service.alt.test.",
}

func runDifferential(t *testing.T, hcl string, cfg consuldns.Config, names []string) {
	a := consultest.Start(t, consultest.WithDNS(), consultest.WithConfig(hcl))
	registerDiffCatalog(t, a)
	waitAgentSynced(t, a)
	r, err := consuldns.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// farmdns's path: a watcher loads each service on its first question,
	// which waits for it, so every first answer is compared too.
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{AskWait: 30 * time.Second},
		a.Client, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	for deadline := time.Now().Add(30 * time.Second); w.Catalog() == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the catalog watcher never read the catalog")
		}
	}
	srv := consuldns.NewServer(r, w)
	udp := &dns.Client{Net: "udp", Timeout: 5 * time.Second, UDPSize: 65535}
	tcp := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	failures, compared, trimmed := 0, 0, 0
	for _, name := range names {
		if strings.Contains(name, "%s") {
			name = fmt.Sprintf(name, a.NodeName)
		}
		for _, qt := range diffTypes {
			full := exchange(t, tcp, a.DNSAddr, query(name, qt, transport{tcp: true}))
			for _, tr := range diffTransports {
				q := query(name, qt, tr)
				c := udp
				if tr.tcp {
					c = tcp
				}
				want := exchange(t, c, a.DNSAddr, q)
				reply, _, ok := srv.Answer(q.Copy(), tr.tcp, netip.MustParseAddr("127.0.0.1"))
				if !ok {
					t.Fatalf("%s: not answered", name)
				}
				got := roundTrip(t, reply)
				compared++
				if len(full.Answer) > len(want.Answer) {
					trimmed++
				}
				if d := compare(want, got, full); d != "" {
					failures++
					if failures <= 40 {
						t.Errorf("%s %s %s: %s\nconsul:\n%v\nfarmdns:\n%v", name, dns.TypeToString[qt], tr, d, want, got)
					}
				}
			}
		}
	}
	t.Logf("%d replies compared, %d of them trimmed by Consul", compared, trimmed)
	if failures > 40 {
		t.Errorf("%d differences in all", failures)
	}
}

func query(name string, qt uint16, tr transport) *dns.Msg {
	q := new(dns.Msg)
	q.SetQuestion(name, qt)
	if tr.edns != 0 {
		q.SetEdns0(tr.edns, tr.odd)
	}
	if tr.odd {
		q.RecursionDesired, q.CheckingDisabled, q.AuthenticatedData = false, true, true
	}
	if tr.ecs {
		opt := q.IsEdns0()
		opt.Option = append(opt.Option, &dns.EDNS0_SUBNET{
			Code: dns.EDNS0SUBNET, Family: 1, SourceNetmask: 24, Address: net.IPv4(192, 0, 2, 0).To4(),
		})
	}
	return q
}

func exchange(t *testing.T, c *dns.Client, addr string, q *dns.Msg) *dns.Msg {
	t.Helper()
	in, _, err := c.Exchange(q.Copy(), addr)
	if err != nil {
		t.Fatalf("consul %s %s: %v", q.Question[0].Name, dns.TypeToString[q.Question[0].Qtype], err)
	}
	return in
}

// roundTrip packs and unpacks m, so both sides are compared as received.
func roundTrip(t *testing.T, m *dns.Msg) *dns.Msg {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatalf("pack %v: %v", m.Question, err)
	}
	out := new(dns.Msg)
	if err := out.Unpack(b); err != nil {
		t.Fatalf("unpack: %v", err)
	}
	return out
}

// compare returns "" when got matches want, else what differs. full is
// Consul's untrimmed (TCP) answer to the same question.
func compare(want, got, full *dns.Msg) string {
	w, g := want.MsgHdr, got.MsgHdr
	w.Id, g.Id = 0, 0
	if w != g {
		return fmt.Sprintf("header %+v, want %+v", g, w)
	}
	if !slices.Equal(want.Question, got.Question) {
		return fmt.Sprintf("question %v, want %v", got.Question, want.Question)
	}
	if d := sameSet("authority", want.Ns, got.Ns); d != "" {
		return d
	}
	if d := sameSet("OPT", opts(want.Extra), opts(got.Extra)); d != "" {
		return d
	}
	trimmed := len(full.Answer) > len(want.Answer)
	if !trimmed {
		if d := sameSet("answer", want.Answer, got.Answer); d != "" {
			return d
		}
		return sameSet("additional", nonOpts(want.Extra), nonOpts(got.Extra))
	}
	// Consul shuffled, then kept the first few: which ones is chance.
	if len(got.Answer) != len(want.Answer) {
		return fmt.Sprintf("%d answers, want %d (of %d)", len(got.Answer), len(want.Answer), len(full.Answer))
	}
	if d := subset("answer", got.Answer, full.Answer); d != "" {
		return d
	}
	// Consul rebuilds the additional section from the kept SRV targets:
	// each target's first record in the full answer, and nothing else.
	if d := sameSet("additional (Consul against its own rule)", keptExtra(want.Answer, full.Extra), nonOpts(want.Extra)); d != "" {
		return d
	}
	return sameSet("additional", keptExtra(got.Answer, full.Extra), nonOpts(got.Extra))
}

// keptExtra returns, for each SRV target in answer, its first record in
// extra, following CNAMEs.
func keptExtra(answer, extra []dns.RR) []dns.RR {
	first := map[string]dns.RR{}
	for _, rr := range extra {
		name := strings.ToLower(rr.Header().Name)
		if _, ok := first[name]; !ok {
			first[name] = rr
		}
	}
	var out []dns.RR
	done := map[string]bool{}
	for _, rr := range answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		for name := strings.ToLower(srv.Target); !done[name]; {
			done[name] = true
			next, ok := first[name]
			if !ok {
				break
			}
			out = append(out, next)
			cname, ok := next.(*dns.CNAME)
			if !ok {
				break
			}
			name = strings.ToLower(cname.Target)
		}
	}
	return out
}

func opts(rrs []dns.RR) []dns.RR {
	return slices.DeleteFunc(slices.Clone(rrs), func(rr dns.RR) bool { return rr.Header().Rrtype != dns.TypeOPT })
}

func nonOpts(rrs []dns.RR) []dns.RR {
	return slices.DeleteFunc(slices.Clone(rrs), func(rr dns.RR) bool { return rr.Header().Rrtype == dns.TypeOPT })
}

// normal writes rr as text with the fields allowed to differ zeroed.
func normal(rr dns.RR) string {
	rr = dns.Copy(rr)
	switch v := rr.(type) {
	case *dns.SRV:
		v.Weight = 0
	case *dns.SOA:
		v.Serial = 0
	}
	return rr.String()
}

func texts(rrs []dns.RR) []string {
	out := make([]string, len(rrs))
	for i, rr := range rrs {
		out[i] = normal(rr)
	}
	slices.Sort(out)
	return out
}

func sameSet(section string, want, got []dns.RR) string {
	w, g := texts(want), texts(got)
	if !slices.Equal(w, g) {
		return fmt.Sprintf("%s differs:\n  got  %q\n  want %q", section, g, w)
	}
	return ""
}

func subset(section string, got, full []dns.RR) string {
	all := texts(full)
	for _, s := range texts(got) {
		if !slices.Contains(all, s) {
			return fmt.Sprintf("%s has %q, which Consul never gives (%q)", section, s, all)
		}
	}
	return ""
}
