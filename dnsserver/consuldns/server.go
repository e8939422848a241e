package consuldns

import (
	"net/netip"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
)

// CatalogSource gives the current catalog view, or nil before the first
// read; health.CatalogWatcher is one.
type CatalogSource interface {
	Catalog() *health.Catalog
}

// Server answers the questions under a Resolver's domains from a live
// catalog. It is what the DNS server dispatches those names to.
type Server struct {
	r   *Resolver
	src CatalogSource
}

// NewServer returns a Server answering with r from src.
func NewServer(r *Resolver, src CatalogSource) *Server {
	return &Server{r: r, src: src}
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
	if cat == nil {
		// Not synced with Consul yet: an empty view would answer NXDOMAIN
		// for names that exist, and resolvers would cache that.
		m := new(dns.Msg)
		m.SetRcode(q, dns.RcodeServerFailure)
		return m, domain, true
	}
	return s.r.Answer(Request{Msg: q, TCP: tcp, Client: client}, cat), domain, true
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
