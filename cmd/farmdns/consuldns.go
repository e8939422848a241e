package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// ConsulDNSConfig is the consul_dns block: answer Consul's DNS names
// (web.service.consul, ...) as Consul's DNS interface does, from the
// catalog read through the consul connection.
type ConsulDNSConfig struct {
	Domain    string `yaml:"domain"`     // default consul.
	AltDomain string `yaml:"alt_domain"` // optional second domain
	// Policy orders and chooses the instances of an answer when Answers is
	// 1 to 8: the Answers instances the policy chooses (least-loaded,
	// weighted or round-robin), counted in its ledger. Answers 0 answers
	// every healthy instance in random order, as Consul does.
	Policy      policy.Kind              `yaml:"policy"`
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
	if cd.Answers < 0 || cd.Answers > policy.MaxAnswers {
		bad("consul_dns.answers", "%d is not between 0 (every healthy instance) and %d", cd.Answers, policy.MaxAnswers)
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
	rc := consuldns.Config{
		Domain: cd.Domain, AltDomain: cd.AltDomain, NodeTTL: cd.NodeTTL, ServiceTTL: cd.ServiceTTL,
		ServiceTTLs: cd.ServiceTTLs, OnlyPassing: cd.OnlyPassing, AnswerLimit: cd.Answers,
	}
	r, err := consuldns.New(rc, nil)
	if err != nil {
		bad("consul_dns", "%v", err)
		return
	}
	if cd.Answers > 0 {
		pc := policy.DefaultConfig()
		pc.Policy, pc.Answers = cd.Policy, cd.Answers
		if _, err := consuldns.NewBalanced(pc, nil); err != nil {
			bad("consul_dns.policy", "%v", err)
		}
		c.consulPolicy = &pc
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
	c.consulDNS, c.consulDNSConfig = r, rc
}

// catalogSlot is the catalog and load source of the Consul DNS domains:
// whichever watchers run now, so a reload that restarts them keeps the
// states already built pointing at the right view.
type catalogSlot struct {
	w         atomic.Pointer[health.CatalogWatcher]
	last      atomic.Pointer[health.Catalog] // the stopped watcher's last view
	loads     atomic.Pointer[health.LoadWatcher]
	lastLoads atomic.Pointer[health.CatalogLoads]

	mu       sync.Mutex
	balanced *consuldns.Balanced // kept across reloads: its ledger
	policy   policy.Config       // what balanced was built with
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

// Await waits, bounded, until the running watcher has loaded names.
func (s *catalogSlot) Await(names []string) *health.Catalog {
	if w := s.w.Load(); w != nil {
		return w.Await(names)
	}
	return nil
}

// Loads returns the running load watcher's reports, or the last ones.
func (s *catalogSlot) Loads() *health.CatalogLoads {
	if w := s.loads.Load(); w != nil {
		if l := w.Loads(); l != nil {
			return l
		}
	}
	return s.lastLoads.Load()
}

// orderer returns the Balanced for pc, the one already running if a reload
// left pc as it was, so its ledger carries over.
func (s *catalogSlot) orderer(pc policy.Config) (*consuldns.Balanced, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.balanced != nil && s.policy == pc {
		return s.balanced, nil
	}
	seeded := pc
	seeded.Seed = rand.Uint64() // instances answering the same resolvers must not agree
	b, err := consuldns.NewBalanced(seeded, s)
	if err != nil {
		return nil, err
	}
	s.balanced, s.policy = b, pc
	return b, nil
}

// attachConsulDNS gives st the Consul DNS domains of cfg, if any, ordered
// by the policy of answers: N with the ledger of the Balanced already
// running if the policy is unchanged.
func attachConsulDNS(st *dnsserver.State, cfg *Config, src *catalogSlot) {
	if cfg.consulDNS == nil {
		return
	}
	r := cfg.consulDNS
	if cfg.consulPolicy != nil {
		// Both were built once by validateConsulDNS: they cannot fail here.
		if b, err := src.orderer(*cfg.consulPolicy); err == nil {
			if br, err := consuldns.New(cfg.consulDNSConfig, b); err == nil {
				r = br
			}
		}
	}
	st.ConsulDNS = consuldns.NewServer(r, src)
}

// catalogKey says what the catalog watcher is started for; a reload that
// changes it needs a new one.
func catalogKey(c *Config) string {
	if c.ConsulDNS == nil {
		return ""
	}
	b, _ := json.Marshal(struct {
		Client       health.ConsulConfig
		LoadPrefix   string        `json:",omitempty"`
		MaxReportAge time.Duration `json:",omitempty"`
	}{c.Consul.ConsulConfig, c.loadPrefix(), c.Consul.MaxReportAge})
	return string(b)
}

// loadPrefix is the load prefix the Consul DNS ordering reads, "" when it
// reads none (answers: 0).
func (c *Config) loadPrefix() string {
	if c.consulPolicy == nil {
		return ""
	}
	return cmp.Or(c.Consul.LoadPrefix, health.DefaultLoadPrefix)
}

// catalogWatch is a running CatalogWatcher, and LoadWatcher if any.
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
	var lw *health.LoadWatcher
	if prefix := cfg.loadPrefix(); prefix != "" {
		lw, err = health.NewLoadWatcher(health.LoadWatcherConfig{
			Prefix: prefix, MaxReportAge: cfg.Consul.MaxReportAge, AllowStale: cfg.Consul.Stale(),
		}, client, s.log)
		if err != nil {
			return fmt.Errorf("consul.load_prefix: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(s.ctx)
	cw := &catalogWatch{cancel: cancel, done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Go(func() { w.Run(ctx) })
	if lw != nil {
		wg.Go(func() { lw.Run(ctx) })
	}
	go func() {
		defer close(cw.done)
		wg.Wait()
	}()
	s.catalogWatch = cw
	s.catalogs.w.Store(w)
	s.catalogs.loads.Store(lw)
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
		if l := s.catalogs.Loads(); l != nil {
			s.catalogs.lastLoads.Store(l)
		}
		s.catalogs.w.Store(nil)
		s.catalogs.loads.Store(nil)
	}
}
