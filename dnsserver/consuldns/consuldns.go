// Package consuldns answers Consul's DNS names (web.service.consul,
// n1.node.consul, 0a000001.addr.consul, ...) from an immutable catalog view,
// record for record as Consul 1.20's agent/dns.go does, so that farmdns can
// stand in for Consul's DNS interface.
//
// The core is pure: a request and a *health.Catalog go in, a *dns.Msg comes
// out; there is no I/O. Which instances answer, and in what order, is left to
// an Orderer: Shuffle is Consul's order, Balanced a load-aware policy's.
package consuldns

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// Consul's fixed limits (agent/dns.go).
const (
	// maxUDPAnswers caps udp_answer_limit.
	maxUDPAnswers = 8
	// maxCNAMERecords bounds the records a CNAME chase adds without EDNS.
	maxCNAMERecords = 5
	// maxRecursion bounds CNAME chasing through names in the domain.
	maxRecursion = 3
	// maxUDPSize is the largest UDP payload Consul will fill.
	maxUDPSize = 65535 - 68
	// maxTCPSize leaves room for the two-octet length prefix and some slack.
	maxTCPSize = 65523
)

// SOAConfig holds the SOA timers; Consul's defaults are 3600, 600, 86400, 0.
type SOAConfig struct {
	Refresh, Retry, Expire, MinTTL uint32
}

// Config is what changes Consul's answers. The zero value of each field but
// Domain is Consul's default except where noted.
type Config struct {
	// Domain and AltDomain are the served domains, e.g. "consul." and
	// "alt.example."; AltDomain may be empty.
	Domain, AltDomain string
	// NodeTTL and ServiceTTL are the TTLs of node and service records.
	NodeTTL, ServiceTTL time.Duration
	// ServiceTTLs overrides ServiceTTL per service, like Consul's
	// service_ttl map: a key matches the service name (as asked, lower
	// case) exactly, or, ending in "*", as a prefix; an exact key wins,
	// then the longest prefix.
	ServiceTTLs map[string]time.Duration
	// OnlyPassing drops instances whose checks warn, not only critical ones.
	OnlyPassing bool
	// AnswerLimit caps the A/AAAA records of a service answer (Consul's
	// a_record_limit); 0 answers every healthy instance.
	AnswerLimit int
	// UDPAnswerLimit caps answers over UDP without EDNS (Consul's
	// udp_answer_limit); 0 means Consul's default, 3.
	UDPAnswerLimit int
	// SOA holds the SOA timers; a zero value means Consul's defaults.
	SOA SOAConfig
}

// Orderer chooses which instances answer and in what order. Order must not
// modify in, which holds the instances the health and tag filters kept; it
// returns a new slice (or in itself, unchanged).
type Orderer interface {
	Order(q OrderQuery, in []*health.CatalogInstance) Ordered
}

// OrderQuery is what an Orderer may base its choice on.
type OrderQuery struct {
	// Service and Tag are the asked service and tag filter, lower case;
	// Tag is "" for none.
	Service, Tag string
	// Qtype is the question's type: A and AAAA name instances of one
	// address family, SRV and the rest any.
	Qtype uint16
	// Client is the asker's address (invalid if unknown).
	Client netip.Addr
	// Room is the most instances the reply can carry (Consul's UDP limit
	// without EDNS), 0 for no bound: a ledger must count only those sent.
	Room int
	// TTL is the TTL the answer will carry.
	TTL time.Duration
	// Catalog is the view being answered from.
	Catalog *health.Catalog
}

// Ordered is an Orderer's choice.
type Ordered struct {
	// In holds the chosen instances, best first.
	In []*health.CatalogInstance
	// Weights, if not nil, are the SRV weights of In's instances; nil
	// means Consul's weight, 1 for all.
	Weights []uint16
}

// Shuffle is Consul's order: every instance, in random order.
type Shuffle struct{}

// Order returns a shuffled copy of in.
func (Shuffle) Order(_ OrderQuery, in []*health.CatalogInstance) Ordered {
	return Ordered{In: shuffled(in)}
}

func shuffled(in []*health.CatalogInstance) []*health.CatalogInstance {
	// A copy: in belongs to the shared, immutable catalog.
	out := append([]*health.CatalogInstance(nil), in...)
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// Request is a question with the transport facts that shape its answer.
type Request struct {
	// Msg is the query as received.
	Msg *dns.Msg
	// TCP says the query came over TCP; over UDP the answer is trimmed to
	// the client's buffer.
	TCP bool
	// Client is the asker's address; a load-aware Orderer keys its choice
	// by the client's /24 or /56. May be the zero Addr.
	Client netip.Addr
}

// Resolver answers Consul DNS names. It is immutable and safe for
// concurrent use.
type Resolver struct {
	cfg    Config
	domain string // lower case, fully qualified
	alt    string // lower case, fully qualified, or ""
	order  Orderer
}

// New validates cfg and returns a Resolver; a nil order means Shuffle.
func New(cfg Config, order Orderer) (*Resolver, error) {
	if cfg.Domain == "" {
		cfg.Domain = "consul."
	}
	r := &Resolver{cfg: cfg, domain: strings.ToLower(dns.Fqdn(cfg.Domain)), order: order}
	if _, ok := dns.IsDomainName(r.domain); !ok || r.domain == "." {
		return nil, fmt.Errorf("consuldns: domain %q is not a domain name", cfg.Domain)
	}
	if cfg.AltDomain != "" {
		r.alt = strings.ToLower(dns.Fqdn(cfg.AltDomain))
		if _, ok := dns.IsDomainName(r.alt); !ok || r.alt == "." || r.alt == r.domain {
			return nil, fmt.Errorf("consuldns: alt_domain %q is not a second domain name", cfg.AltDomain)
		}
	}
	if r.cfg.UDPAnswerLimit <= 0 {
		r.cfg.UDPAnswerLimit = 3
	}
	if r.cfg.SOA == (SOAConfig{}) {
		r.cfg.SOA = SOAConfig{Refresh: 3600, Retry: 600, Expire: 86400}
	}
	if r.order == nil {
		r.order = Shuffle{}
	}
	return r, nil
}

// Domains returns the served domains, lower case: the domain, then the
// alt domain if any.
func (r *Resolver) Domains() []string {
	if r.alt == "" {
		return []string{r.domain}
	}
	return []string{r.domain, r.alt}
}

// outcome is what a lookup found; one place turns it into rcode and SOA.
type outcome uint8

const (
	// found is NOERROR with no SOA, even when the answer is empty (Consul
	// answers node questions of other types, and addr questions of the
	// other family, that way).
	found outcome = iota
	// noData is NOERROR with the SOA in the authority section.
	noData
	// nameError is NXDOMAIN with the SOA.
	nameError
)

// result is a lookup's records and outcome.
type result struct {
	answer, extra []dns.RR
	out           outcome
	// ecsLocal marks answers that depend on the client's address (prepared
	// queries), so the ECS scope is echoed rather than zeroed.
	ecsLocal bool
}

// Answer builds the reply to req from cat. The question must be one of
// r.Domains() or below; the caller dispatches on that.
func (r *Resolver) Answer(req Request, cat *health.Catalog) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req.Msg)
	m.Compress = true
	if len(req.Msg.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	m.Authoritative = true
	q := req.Msg.Question[0]
	ecsLocal := false
	switch q.Qtype {
	case dns.TypeSOA:
		// SOA and NS are the apex records whatever name in the domain asks.
		m.Answer = []dns.RR{r.soa(q.Name, cat)}
		m.Ns, m.Extra = r.nameservers(q.Name, cat)
	case dns.TypeNS:
		m.Answer, m.Extra = r.nameservers(q.Name, cat)
	case dns.TypeAXFR:
		m.Rcode = dns.RcodeNotImplemented
	default:
		res := r.lookup(q, r.askOf(req), cat, maxRecursion)
		m.Answer, m.Extra, ecsLocal = res.answer, res.extra, res.ecsLocal
		switch res.out {
		case nameError:
			m.Rcode = dns.RcodeNameError
			m.Ns = append(m.Ns, r.soa(q.Name, cat))
		case noData:
			m.Ns = append(m.Ns, r.soa(q.Name, cat))
		}
	}
	// Consul adds the OPT record before trimming, and trimming may rebuild
	// the additional section without it; keep that order.
	setEDNS(req.Msg, m, !ecsLocal)
	if req.TCP {
		trimTCP(q.Qtype, m)
	} else {
		trimUDP(req.Msg, m, r.cfg.UDPAnswerLimit)
	}
	return m
}

// ask is what of a request shapes a service answer beyond its question.
type ask struct {
	edns   bool
	client netip.Addr
	room   int // see OrderQuery.Room
}

// askOf returns req's ask: over UDP without EDNS, or with a buffer of 512
// or less, Consul keeps at most UDPAnswerLimit answers.
func (r *Resolver) askOf(req Request) ask {
	a := ask{client: req.Client}
	opt := req.Msg.IsEdns0()
	a.edns = opt != nil
	if !req.TCP && (opt == nil || opt.UDPSize() <= 512) {
		a.room = min(maxUDPAnswers, r.cfg.UDPAnswerLimit)
	}
	return a
}

// soa returns the apex SOA of the domain qname is in. Consul names the alt
// domain's SOA after the primary domain when the question is the alt apex or
// not in lower case; that is a bug, and here the alt domain gets its own.
func (r *Resolver) soa(qname string, cat *health.Catalog) *dns.SOA {
	domain := r.domain
	if r.alt != "" && dns.IsSubDomain(r.alt, strings.ToLower(qname)) {
		domain = r.alt
	}
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: domain, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: r.cfg.SOA.MinTTL},
		Ns:      "ns." + domain,
		Mbox:    "hostmaster." + domain,
		Serial:  uint32(cat.Index),
		Refresh: r.cfg.SOA.Refresh,
		Retry:   r.cfg.SOA.Retry,
		Expire:  r.cfg.SOA.Expire,
		Minttl:  r.cfg.SOA.MinTTL,
	}
}

// validNSName reports whether Consul would put a node name in an NS target.
func validNSName(name string) bool {
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// nameservers returns up to three NS records, one per healthy instance of
// the "consul" service (Consul's servers), and their addresses as glue.
func (r *Resolver) nameservers(qname string, cat *health.Catalog) (ns, glue []dns.RR) {
	respDomain := r.responseDomain(qname)
	servers := shuffled(r.healthy(cat.Services["consul"], ""))
	for _, in := range servers {
		if !validNSName(in.Node.Name) {
			continue
		}
		target := strings.ToLower(dns.Fqdn(in.Node.Name + ".node." + cat.Datacenter + "." + respDomain))
		ns = append(ns, &dns.NS{
			Hdr: dns.RR_Header{Name: respDomain, Rrtype: dns.TypeNS, Class: dns.ClassINET, Ttl: ttl(r.cfg.NodeTTL)},
			Ns:  target,
		})
		glue = append(glue, r.nodeRecords(in.Node, dns.TypeANY, target, cat, maxRecursion)...)
		if len(ns) == 3 {
			break
		}
	}
	return ns, glue
}

// healthy returns the instances Consul's health filter keeps: none with a
// critical check (maintenance is one), none warning with only_passing, and
// only those carrying tag when tag is set.
func (r *Resolver) healthy(in []*health.CatalogInstance, tag string) []*health.CatalogInstance {
	var out []*health.CatalogInstance
	for _, i := range in {
		switch i.Status() {
		case health.HealthCritical:
			continue
		case health.HealthWarning:
			if r.cfg.OnlyPassing {
				continue
			}
		}
		if tag != "" && !i.HasTag(tag) {
			continue
		}
		out = append(out, i)
	}
	return out
}

// responseDomain returns the served domain qname ends in, spelled as in
// qname; Consul builds SRV targets and NS names with it.
//
// It runs once per record of an answer, so it slices qname rather than
// splitting and joining its labels.
func (r *Resolver) responseDomain(qname string) string {
	name := dns.Fqdn(qname)
	for i := 0; i < len(name); i++ {
		// At a label boundary (not an escaped dot), longest suffix first.
		if i == 0 || name[i-1] == '.' && (i < 2 || name[i-2] != '\\') {
			if suffix := name[i:]; strings.EqualFold(suffix, r.domain) || (r.alt != "" && strings.EqualFold(suffix, r.alt)) {
				return suffix
			}
		}
	}
	return r.domain
}

// trimDomain strips the served domain from a lower-case name.
func (r *Resolver) trimDomain(name string) string {
	longer, shorter := r.domain, r.alt
	if len(shorter) > len(longer) {
		longer, shorter = shorter, longer
	}
	if strings.HasSuffix(name, "."+longer) || name == longer {
		return strings.TrimSuffix(name, longer)
	}
	if shorter != "" && (strings.HasSuffix(name, "."+shorter) || name == shorter) {
		return strings.TrimSuffix(name, shorter)
	}
	return name
}

// serviceTTL returns the TTL of a service's records.
func (r *Resolver) serviceTTL(service string) time.Duration {
	if d, ok := r.cfg.ServiceTTLs[service]; ok {
		return d
	}
	best, d := -1, r.cfg.ServiceTTL
	for k, v := range r.cfg.ServiceTTLs {
		prefix, ok := strings.CutSuffix(k, "*")
		if ok && len(prefix) > best && strings.HasPrefix(service, prefix) {
			best, d = len(prefix), v
		}
	}
	return d
}

func ttl(d time.Duration) uint32 { return uint32(d / time.Second) }
