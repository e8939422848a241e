package main

import (
	"context"
	"encoding/json"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
)

// ConsulDNSConfig is the consul_dns block: answer Consul's DNS names
// (web.service.consul, ...) as Consul's DNS interface does, from the
// catalog read through the consul connection.
type ConsulDNSConfig struct {
	Domain    string `yaml:"domain"`     // default consul.
	AltDomain string `yaml:"alt_domain"` // optional second domain
	// Policy and Answers will choose and order instances by load; until
	// then they must be unset: every healthy instance answers, shuffled.
	Policy      string                   `yaml:"policy"`
	Answers     int                      `yaml:"answers"`
	ServiceTTL  time.Duration            `yaml:"service_ttl"`
	ServiceTTLs map[string]time.Duration `yaml:"service_ttls"` // per service; "prefix*" keys match prefixes
	NodeTTL     time.Duration            `yaml:"node_ttl"`
	OnlyPassing bool                     `yaml:"only_passing"`
}

// validateConsulDNS checks the consul_dns block against itself and the
// zones, and keeps the resolver it builds for buildState.
func (c *Config) validateConsulDNS(bad func(key, format string, args ...any)) {
	cd := c.ConsulDNS
	if cd == nil {
		return
	}
	if cd.Policy != "" {
		bad("consul_dns.policy", "not supported yet: instances are answered in random order, as Consul does")
	}
	if cd.Answers != 0 {
		bad("consul_dns.answers", "not supported yet: every healthy instance is answered, as Consul does")
	}
	for key, d := range map[string]time.Duration{"consul_dns.service_ttl": cd.ServiceTTL, "consul_dns.node_ttl": cd.NodeTTL} {
		if d < 0 || d%time.Second != 0 {
			bad(key, "must be whole seconds, not negative")
		}
	}
	for k, d := range cd.ServiceTTLs {
		if d < 0 || d%time.Second != 0 {
			bad("consul_dns.service_ttls."+k, "must be whole seconds, not negative")
		}
	}
	r, err := consuldns.New(consuldns.Config{
		Domain: cd.Domain, AltDomain: cd.AltDomain, NodeTTL: cd.NodeTTL, ServiceTTL: cd.ServiceTTL,
		ServiceTTLs: cd.ServiceTTLs, OnlyPassing: cd.OnlyPassing,
	}, nil)
	if err != nil {
		bad("consul_dns", "%v", err)
		return
	}
	// A zone inside a Consul domain, or a Consul domain inside a zone,
	// would leave one of them unreachable.
	for _, d := range r.Domains() {
		for i, z := range c.Zones {
			origin := dns.CanonicalName(z.Origin)
			if dns.IsSubDomain(d, origin) || dns.IsSubDomain(origin, d) {
				bad(fmt.Sprintf("zones[%d].origin", i), "%s overlaps consul_dns domain %s", origin, d)
			}
		}
	}
	c.consulDNS = r
}

// catalogSlot is the catalog source of the Consul DNS domains: whichever
// CatalogWatcher runs now, so a reload that restarts it keeps the states
// already built pointing at the right view.
type catalogSlot struct {
	w    atomic.Pointer[health.CatalogWatcher]
	last atomic.Pointer[health.Catalog] // the stopped watcher's last view
}

// Catalog returns the running watcher's view; until it has one, the view
// of the watcher it replaced, so a reload does not blank the domain.
func (s *catalogSlot) Catalog() *health.Catalog {
	if w := s.w.Load(); w != nil {
		if c := w.Catalog(); c != nil {
			return c
		}
	}
	return s.last.Load()
}

// Ask and Await pass a question's services to the running watcher, which
// loads them on demand (consuldns.Loader).
func (s *catalogSlot) Ask(service string) {
	if w := s.w.Load(); w != nil {
		w.Ask(service)
	}
}

func (s *catalogSlot) Await(names []string) *health.Catalog {
	if w := s.w.Load(); w != nil {
		return w.Await(names)
	}
	return nil
}

// attachConsulDNS gives st the Consul DNS domains of cfg, if any.
func attachConsulDNS(st *dnsserver.State, cfg *Config, src *catalogSlot) {
	if cfg.consulDNS != nil {
		st.ConsulDNS = consuldns.NewServer(cfg.consulDNS, src)
	}
}

// catalogKey says what the catalog watcher is started for; a reload that
// changes it needs a new one.
func catalogKey(c *Config) string {
	if c.ConsulDNS == nil {
		return ""
	}
	b, _ := json.Marshal(c.Consul.ConsulConfig)
	return string(b)
}

// catalogWatch is a running CatalogWatcher.
type catalogWatch struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// startCatalogWatch starts reading the catalog for cfg's Consul DNS
// domains; until the first read they answer SERVFAIL.
func (s *server) startCatalogWatch(cfg *Config) error {
	if cfg.ConsulDNS == nil {
		return nil
	}
	client, err := cfg.Consul.Client()
	if err != nil {
		return fmt.Errorf("consul: %w", err)
	}
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{AllowStale: cfg.Consul.Stale()}, client, s.log)
	ctx, cancel := context.WithCancel(s.ctx)
	cw := &catalogWatch{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(cw.done)
		w.Run(ctx)
	}()
	s.catalogWatch = cw
	s.catalogs.w.Store(w)
	return nil
}

func (s *server) stopCatalogWatch() {
	if s.catalogWatch != nil {
		s.catalogWatch.cancel()
		<-s.catalogWatch.done
		s.catalogWatch = nil
		if c := s.catalogs.Catalog(); c != nil {
			s.catalogs.last.Store(c)
		}
		s.catalogs.w.Store(nil)
	}
}
