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
	"github.com/prometheus/client_golang/prometheus"

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
		MaxStaleness time.Duration `json:",omitempty"`
	}{c.Consul.ConsulConfig, c.loadPrefix(), c.Consul.MaxReportAge, c.Consul.MaxStaleness})
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
	// Blocking queries must answer well within max_staleness, as the
	// pool watcher's do, for the readiness to mean something.
	staleness := cmp.Or(cfg.Consul.MaxStaleness, health.DefaultMaxStaleness)
	w := health.NewCatalogWatcher(health.CatalogWatcherConfig{
		AllowStale: cfg.Consul.Stale(), MaxStaleness: staleness,
		WaitTime: min(health.DefaultMaxWaitTime, staleness/4),
	}, client, s.log)
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

// consulDNSCollector exposes the Consul DNS side: the running catalog
// watcher's sync state, and the answers per target of every service asked
// with answers: N, as farmdns_pool_answers_total with the pool named as
// asked ("web.service.consul.", "primary.web.service.consul.").
type consulDNSCollector struct{ s *server }

// Describe sends nothing: the series come and go with the watcher and the
// names asked, and share names with other collectors.
func (consulDNSCollector) Describe(chan<- *prometheus.Desc) {}

func (c consulDNSCollector) Collect(ch chan<- prometheus.Metric) {
	if w := c.s.catalogs.w.Load(); w != nil {
		w.Collector().Collect(ch)
	}
	for _, p := range c.s.consulPools(time.Now()) {
		for _, t := range p.Targets {
			ch <- dnsserver.PoolAnswersMetric(p.Name, t.Node+"/"+t.ServiceID, t.Answers)
		}
	}
}

// consulPool is one asked service's pool, named as asked.
type consulPool struct {
	Name, Service string // Service in lower case
	Targets       []policy.TargetStats
}

// consulPools returns the pools of the services asked with answers: N,
// none with answers: 0 (no ledger: Consul's order).
func (s *server) consulPools(now time.Time) []consulPool {
	cfg := s.cfg.Load()
	if cfg.consulDNS == nil || cfg.consulPolicy == nil {
		return nil
	}
	s.catalogs.mu.Lock()
	b := s.catalogs.balanced
	s.catalogs.mu.Unlock()
	if b == nil {
		return nil
	}
	domain := cfg.consulDNS.Domains()[0]
	var out []consulPool
	for _, p := range b.AllStats(now) {
		name := p.Service + ".service." + domain
		if p.Tag != "" {
			name = p.Tag + "." + name
		}
		out = append(out, consulPool{Name: name, Service: p.Service, Targets: p.Targets})
	}
	return out
}

// catalogReady reports whether the Consul DNS domains answer from a
// catalog Consul confirmed within max_staleness; true without consul_dns.
func (s *server) catalogReady() (bool, string) {
	if s.cfg.Load().ConsulDNS == nil {
		return true, ""
	}
	w := s.catalogs.w.Load()
	if w == nil {
		return false, "consul_dns configured but no catalog watcher running"
	}
	if ok, why := w.Status().Ready(time.Now()); !ok {
		return false, "consul_dns catalog: " + why
	}
	return true, ""
}

// consulDNSStatus is the Consul DNS section of /status.
type consulDNSStatus struct {
	Domains  []string        `json:"domains"`
	Ready    bool            `json:"ready"`
	Why      string          `json:"why,omitempty"`
	Index    uint64          `json:"index"` // of the catalog view served; 0 before the first read
	Services int             `json:"services"`
	Nodes    int             `json:"nodes"`
	DataSets []dataSetStatus `json:"data_sets"`
	// Pools are the services asked with answers: N, as the zones' pools.
	Pools []poolStatus `json:"pools"`
}

// consulDNSStatus returns the Consul DNS section without its pools, nil
// without consul_dns, and the pools for recentAnswers.shares.
func (s *server) consulDNSStatus(now time.Time) (*consulDNSStatus, []dnsserver.PoolStatus) {
	cfg := s.cfg.Load()
	if cfg.consulDNS == nil {
		return nil, nil
	}
	cs := &consulDNSStatus{Domains: cfg.consulDNS.Domains()}
	cs.Ready, cs.Why = s.catalogReady()
	cat := s.catalogs.Catalog()
	if cat != nil {
		cs.Index, cs.Services, cs.Nodes = cat.Index, len(cat.Services), len(cat.Nodes)
		if cat.Partial {
			cs.Services = len(cat.Listed) // the view holds only the services asked
		}
	}
	if w := s.catalogs.w.Load(); w != nil {
		cs.DataSets = dataSets(w.Status())
	}
	loads := s.catalogs.Loads()
	var pools []dnsserver.PoolStatus
	for _, p := range s.consulPools(now) {
		ps := dnsserver.PoolStatus{
			Name: p.Name, Zone: cs.Domains[0], Service: p.Service, Mode: policy.Nodes.String(),
			Policy: cfg.consulPolicy.Policy.String(), Answers: cfg.consulPolicy.Answers,
		}
		for _, t := range p.Targets {
			ts := dnsserver.TargetStatus{
				Node: t.Node, ServiceID: t.ServiceID, Draining: t.Draining, Eligible: t.Eligible,
				Predicted: t.Predicted, Answers: t.Answers, LastAnswered: timeOrNil(t.LastAnswered),
				ExposureEnds: timeOrNil(t.ExposureEnds), SlowStartEnds: timeOrNil(t.SlowStartEnds),
			}
			if in := catalogInstance(cat, p.Service, t.Node, t.ServiceID); in != nil {
				ts.Address, ts.Port, ts.Health = cmp.Or(in.Address, in.Node.Address), uint16(in.Port), in.Status().String()
				ld := loads.Load(in.Service, in.Node.Name, in.ID, now)
				ts.Connections, ts.Capacity = ld.Connections, ld.Capacity
				ts.LoadState, ts.LoadSource = ld.State.String(), ld.Source.String()
				if !ld.Updated.IsZero() {
					ts.ReportAge = now.Sub(ld.Updated).Seconds()
				}
			}
			ps.Targets = append(ps.Targets, ts)
		}
		pools = append(pools, ps)
	}
	return cs, pools
}

// catalogInstance finds one instance of service (lower case) in cat.
func catalogInstance(cat *health.Catalog, service, node, id string) *health.CatalogInstance {
	if cat == nil {
		return nil
	}
	for _, in := range cat.Services[service] {
		if in.Node.Name == node && in.ID == id {
			return in
		}
	}
	return nil
}

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	return &t
}
