package consuldns

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// LoadSource gives the current load reports, or nil before the first read;
// health.LoadWatcher is one.
type LoadSource interface {
	Loads() *health.CatalogLoads
}

// Balanced is the load-aware Orderer: answers: N keeps the N instances a
// policy.Pool chooses, in its order, counted in the pool's ledger as a pool
// answer is, with the same anti-herd, slow start and stickiness; SRV
// weights come from headroom.
//
// There is one pool per asked service and tag filter, built on the first
// question and rebuilt when the catalog view or the load reports change;
// each rebuild carries the ledger over from the one before. A tag filter
// gets a pool of its own because a policy.Pool chooses among all of its
// eligible targets: a pool of the whole service cannot be asked to choose
// among the tagged ones only. The two pools then do not see each other's
// answers, only until the next load report resets both predictions.
type Balanced struct {
	cfg   policy.Config
	loads LoadSource
	pools sync.Map // poolKey -> *balancedSlot
}

type poolKey struct{ service, tag string }

// balancedSlot is one key's current build; rebuilds are serialised by mu,
// reads never wait.
type balancedSlot struct {
	mu  sync.Mutex
	cur atomic.Pointer[balancedPool]
}

// balancedPool is one build of a key's pool: the policy.Pool and the
// instances its records stand for, and what it was built from.
type balancedPool struct {
	pool  *policy.Pool
	ins   []*health.CatalogInstance // parallel to pool.Records()
	cat   *health.Catalog
	loads *health.CatalogLoads
	ttl   time.Duration
}

// NewBalanced returns a Balanced ordering by cfg (answers, policy and seed
// are what a config sets; DefaultConfig gives the rest) and the loads of
// src, which may be nil (every load unknown: the policy then spreads by its
// own ledger). cfg's TTL and sticky window are fitted to each service's TTL.
func NewBalanced(cfg policy.Config, src LoadSource) (*Balanced, error) {
	cfg.Mode = policy.Nodes
	cfg.TTLJitter = 0                // answers carry the configured TTL, as Consul's do
	cfg.OnEmpty = policy.EmptyNoData // never an unhealthy instance: Consul leaves them out
	cfg.TTL = time.Second
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("consuldns: %w", err)
	}
	return &Balanced{cfg: cfg, loads: src}, nil
}

// Answers returns N, the most instances one answer names.
func (b *Balanced) Answers() int { return b.cfg.Answers }

// Order chooses at most N of in (and of q.Room), best first.
func (b *Balanced) Order(q OrderQuery, in []*health.CatalogInstance) Ordered {
	n := b.cfg.Answers
	if q.Room > 0 {
		n = min(n, q.Room)
	}
	now := time.Now()
	bp := b.current(q, in, now)
	fam := policy.AnyFamily
	switch q.Qtype {
	case dns.TypeA:
		fam = policy.IPv4
	case dns.TypeAAAA:
		fam = policy.IPv6
	}
	var buf [policy.MaxAnswers]int
	var picked []int
	if len(bp.ins) > 0 {
		picked, _, _ = bp.pool.ChooseN(buf[:0], fam, clientKey(q.Client, q.Service, q.Tag), now.UnixNano(), n)
	}
	if len(picked) == 0 {
		// No instance of the family (the answer is then empty, as
		// Consul's), or only instances named by a hostname, which the
		// policy cannot weigh: Consul's order, cut to N.
		out := shuffled(in)
		return Ordered{In: out[:min(n, len(out))]}
	}
	out := Ordered{In: make([]*health.CatalogInstance, len(picked))}
	if q.Qtype == dns.TypeSRV {
		out.Weights = make([]uint16, len(picked))
	}
	for k, i := range picked {
		out.In[k] = bp.ins[i]
		if out.Weights != nil {
			out.Weights[k] = bp.pool.Weight(i, now.UnixNano())
		}
	}
	return out
}

// current returns q's pool, rebuilding it if the catalog view, the loads or
// the TTL changed since its last build.
func (b *Balanced) current(q OrderQuery, in []*health.CatalogInstance, now time.Time) *balancedPool {
	key := poolKey{q.Service, q.Tag}
	v, ok := b.pools.Load(key)
	if !ok {
		v, _ = b.pools.LoadOrStore(key, new(balancedSlot))
	}
	s := v.(*balancedSlot)
	var loads *health.CatalogLoads
	if b.loads != nil {
		loads = b.loads.Loads()
	}
	fresh := func(p *balancedPool) bool {
		return p != nil && p.cat == q.Catalog && p.loads == loads && p.ttl == q.TTL
	}
	if p := s.cur.Load(); fresh(p) {
		return p
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.cur.Load()
	if fresh(prev) {
		return prev // another question rebuilt it meanwhile
	}
	cfg := b.cfg
	cfg.TTL = max(time.Second, q.TTL.Truncate(time.Second))
	if cfg.StickyWindow >= cfg.TTL {
		cfg.StickyWindow = cfg.TTL / 2
	}
	p := &balancedPool{cat: q.Catalog, loads: loads, ttl: q.TTL}
	var targets []health.Target
	for _, i := range in {
		t, ok := target(i, loads, now)
		if !ok {
			continue
		}
		targets = append(targets, t)
		p.ins = append(p.ins, i)
	}
	var prevPool *policy.Pool
	if prev != nil {
		prevPool = prev.pool
	}
	p.pool = policy.NewPool(cfg, targets, nil, prevPool, now)
	s.cur.Store(p)
	return p
}

// target converts an instance the health filter kept into a policy target:
// its address is the one an A question answers with when that is IPv4, else
// the one an AAAA question answers with; an instance named by a hostname is
// no target.
func target(i *health.CatalogInstance, loads *health.CatalogLoads, now time.Time) (health.Target, bool) {
	addr, ok := instanceIP(i, acceptIPv4)
	if !ok || !addr.Is4() {
		if addr, ok = instanceIP(i, acceptIPv6); !ok {
			return health.Target{}, false
		}
	}
	h := health.HealthPassing
	if i.Status() == health.HealthWarning {
		h = health.HealthWarning
	}
	return health.Target{
		Node: i.Node.Name, ServiceID: i.ID, Address: addr, Port: uint16(i.Port), Tags: i.Tags,
		Health: h, Load: loads.Load(i.Service, i.Node.Name, i.ID, now),
	}, true
}

// instanceIP is the address instanceRecords answers with for a question
// accepting a, if it is an IP.
func instanceIP(i *health.CatalogInstance, a accept) (netip.Addr, bool) {
	s := pickAddress(a, i.Address, i.LANv4, i.LANv6)
	if s == "" {
		s = pickAddress(a, i.Node.Address, i.Node.LANv4, i.Node.LANv6)
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	addr, ok := netip.AddrFromSlice(ip)
	return addr.Unmap(), ok
}

// clientKey names the asker as dnsserver's pools do: the client's /24
// (IPv4) or /56 (IPv6) and the name asked, so one resolver's A and AAAA
// questions get the same nodes.
func clientKey(a netip.Addr, service, tag string) uint64 {
	b := a.Unmap().As16()
	if a.Unmap().Is4() {
		b[15] = 0
	} else {
		clear(b[7:])
	}
	h := uint64(14695981039346656037) // FNV-1a
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	for _, s := range []string{service, "\x00", tag} {
		for i := 0; i < len(s); i++ {
			h = (h ^ uint64(s[i])) * 1099511628211
		}
	}
	return h
}

// Stats returns the ledger and load view of the pool of one service and
// tag filter (lower case), or nil if nobody asked for it yet.
func (b *Balanced) Stats(service, tag string, now time.Time) []policy.TargetStats {
	v, ok := b.pools.Load(poolKey{service, tag})
	if !ok {
		return nil
	}
	p := v.(*balancedSlot).cur.Load()
	if p == nil {
		return nil
	}
	return p.pool.Stats(now)
}
