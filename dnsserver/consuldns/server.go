package consuldns

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// CatalogSource gives the current catalog view, or nil before the first
// read; health.CatalogWatcher is one.
type CatalogSource interface {
	Catalog() *health.Catalog
}

// Loader is a CatalogSource whose views hold only the services asked for
// (health.Catalog.Partial); health.CatalogWatcher is one.
type Loader interface {
	// Ask says a question reads service (lower case), so it is loaded
	// and kept loaded.
	Ask(service string)
	// Await waits, for a bounded time, for a view in which every service
	// in names is loaded, and returns it; nil if none came in time.
	Await(names []string) *health.Catalog
}

// Server answers the questions under a Resolver's domains from a live
// catalog. It is what the DNS server dispatches those names to.
type Server struct {
	r    *Resolver
	src  CatalogSource
	load Loader // src, when it loads on demand; else nil
}

// NewServer returns a Server answering with r from src. When src is also
// a Loader, each question first asks for the services it reads.
func NewServer(r *Resolver, src CatalogSource) *Server {
	load, _ := src.(Loader)
	return &Server{r: r, src: src, load: load}
}

// Answer returns the reply to q, asked by client, and the served domain it
// is in, or false when q's question is not under the served domains (or q
// is not a plain query), so the caller answers it otherwise.
func (s *Server) Answer(q *dns.Msg, tcp bool, client netip.Addr) (*dns.Msg, string, bool) {
	if q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 {
		return nil, "", false
	}
	domain := s.domain(q.Question[0].Name)
	if domain == "" {
		return nil, "", false
	}
	cat := s.src.Catalog()
	if cat != nil && cat.Partial && s.load != nil {
		cat = s.loaded(q.Question[0], cat)
	}
	if cat == nil {
		// Not synced with Consul yet, or the service asked for did not
		// load in time: an empty view would answer NXDOMAIN for names
		// that exist, and resolvers would cache that.
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeServerFailure)
		return m, domain, true
	}
	return s.r.Answer(Request{Msg: q, TCP: tcp, Client: client}, cat), domain, true
}

// loaded asks for the services the answer to q reads and returns a view
// holding them all, waiting for their first read if need be; nil if they
// did not load in time. An answer may chase a CNAME into another service,
// known only once the first is loaded, hence the rounds.
func (s *Server) loaded(q dns.Question, cat *health.Catalog) *health.Catalog {
	var buf [4]string
	for range maxRecursion + 1 {
		names := s.r.reads(q, cat, buf[:0])
		missing := false
		for _, n := range names {
			s.load.Ask(n)
			missing = missing || !cat.Loaded(n)
		}
		if !missing {
			return cat
		}
		// A copy: buf stays on the stack on the common path.
		if cat = s.load.Await(slices.Clone(names)); cat == nil {
			return nil
		}
	}
	return cat
}

// reads appends to out the lower-case names of the services the answer to
// q reads from cat, as far as cat shows: a service's CNAME targets in the
// domain are known once it is loaded.
func (r *Resolver) reads(q dns.Question, cat *health.Catalog, out []string) []string {
	switch q.Qtype {
	case dns.TypeSOA, dns.TypeNS:
		// The apex records name Consul's servers, the "consul" service.
		return append(out, "consul")
	case dns.TypeAXFR:
		return out
	}
	return r.readsName(q.Name, q.Qtype, cat, maxRecursion, out)
}

func (r *Resolver) readsName(name string, qtype uint16, cat *health.Catalog, depth int, out []string) []string {
	var buf [8]string
	kind, parts, _ := parseName(splitLabels(r.trimDomain(strings.ToLower(dns.Fqdn(name))), buf[:0]), qtype)
	if len(parts) == 0 {
		return out
	}
	switch kind {
	case "service":
		service, _ := serviceTag(parts)
		out = append(out, service)
		for _, in := range cat.Services[service] {
			if in.Address != "" {
				out = r.readsHost(in.Address, cat, depth, out)
			} else {
				out = r.readsHost(in.Node.Address, cat, depth, out)
			}
		}
	case "node":
		if n := cat.Nodes[strings.Join(parts, ".")]; n != nil {
			out = r.readsHost(n.Address, cat, depth, out)
		}
	}
	return out
}

// readsHost follows an address that is a name in the served domains, as
// the answer's CNAME chase does.
func (r *Resolver) readsHost(host string, cat *health.Catalog, depth int, out []string) []string {
	// Most addresses are IPs: the suffix test comes first, as it does not
	// allocate.
	if depth < 1 || !r.under(host) {
		return out
	}
	return r.readsName(host, dns.TypeANY, cat, depth-1, out)
}

// under reports whether host is a name below a served domain.
func (r *Resolver) under(host string) bool {
	host = strings.TrimSuffix(host, ".")
	for _, d := range [2]string{r.domain, r.alt} {
		d = strings.TrimSuffix(d, ".")
		if d != "" && len(host) > len(d) && host[len(host)-len(d)-1] == '.' && strings.EqualFold(host[len(host)-len(d):], d) {
			return true
		}
	}
	return false
}

// Domains returns the served domains, lower case and fully qualified.
func (s *Server) Domains() []string { return s.r.Domains() }

// domain returns the closest served domain name is in, or "".
func (s *Server) domain(name string) string {
	best := ""
	for _, d := range s.r.Domains() {
		if dns.IsSubDomain(d, name) && len(d) > len(best) {
			best = d
		}
	}
	return best
}
