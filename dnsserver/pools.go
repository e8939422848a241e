package dnsserver

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// PoolSpec is one load-balanced name: where it is in the DNS, which Consul
// services feed it, and how its answers are chosen.
type PoolSpec struct {
	// Name is the owner name, fully qualified and lower case.
	Name string
	// Zone is the origin of the zone that holds Name.
	Zone string
	// Service is the Consul service of the targets (the nodes).
	Service string
	// LBService is the Consul service of the shards' load balancers; shards
	// mode only.
	LBService string
	// Policy is how answers are chosen.
	Policy policy.Config
}

// poolSlot holds the current policy.Pool of one PoolSpec. The State owns the
// slots; snapshots from Consul replace the pool inside, never the slot, so a
// query always finds its pool where the zone's binding says.
type poolSlot struct {
	spec     PoolSpec
	cur      atomic.Pointer[servedPool]
	outcomes []outcomeCounts // a shard per reader, like the query counters
}

// outcomeCounts counts one shard's answers by policy.Outcome, on a cache
// line of its own: a shared one would bounce between the cores answering.
type outcomeCounts struct {
	n [4]atomic.Uint64
	_ [32]byte
}

// outcome returns how many answers had outcome o, over every shard.
func (s *poolSlot) outcome(o policy.Outcome) uint64 {
	var n uint64
	for i := range s.outcomes {
		n += s.outcomes[i].n[o].Load()
	}
	return n
}

// servedPool is one build of a slot's pool with the names of its SRV
// targets: one pointer swaps both, so a query never mixes two builds.
type servedPool struct {
	*policy.Pool
	targets *targetNames
}

func newSlots(specs []PoolSpec) []*poolSlot {
	slots := make([]*poolSlot, len(specs))
	for i, s := range specs {
		slots[i] = &poolSlot{spec: s, outcomes: make([]outcomeCounts, counterShards())}
	}
	return slots
}

// pools feeds the State's slots from health snapshots. Building a
// policy.Pool is serialised (each carries its ledger over from the one
// before), and so is swapping the State, so that no snapshot is applied to
// a State on its way out only; reading a pool never waits.
type pools struct {
	mu     sync.Mutex
	latest map[string][]health.Target // by Consul service, from the latest snapshots
}

// swap makes st the handler's state, its pools built from the latest
// targets, each carrying its ledger over from the old state's pool of the
// same name.
func (p *pools) swap(state *atomic.Pointer[State], st *State, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	old := map[string]*poolSlot{}
	if prev := state.Load(); prev != nil {
		for _, s := range prev.pools {
			old[s.spec.Name] = s
		}
	}
	for _, s := range st.pools {
		if o := old[s.spec.Name]; o != nil && o != s {
			s.cur.Store(o.cur.Load())
			for i := range s.outcomes[0].n {
				s.outcomes[0].n[i].Store(o.outcome(policy.Outcome(i)))
			}
		}
		p.rebuild(s, now)
	}
	state.Store(st)
}

// update takes in the targets of the given services and rebuilds every pool
// of the current state.
func (p *pools) update(state *atomic.Pointer[State], targets map[string][]health.Target, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	latest := make(map[string][]health.Target, len(p.latest)+len(targets))
	for k, v := range p.latest {
		latest[k] = v
	}
	for k, v := range targets {
		latest[k] = v
	}
	p.latest = latest
	for _, s := range state.Load().pools {
		p.rebuild(s, now)
	}
}

func (p *pools) rebuild(s *poolSlot, now time.Time) {
	var lbs []health.Target
	if s.spec.LBService != "" {
		lbs = p.latest[s.spec.LBService]
	}
	var prev *policy.Pool
	var prevNames *targetNames
	var prevRecords []health.Target
	if old := s.cur.Load(); old != nil {
		prev, prevNames, prevRecords = old.Pool, old.targets, old.Records()
	}
	if prev != nil && len(prev.Stats(now)) == 0 {
		// Nothing to carry over, and the first targets a pool sees (at
		// start-up, say) are not "new" next to each other: no slow start.
		prev = nil
	}
	pool := policy.NewPool(s.spec.Policy, p.latest[s.spec.Service], lbs, prev, now)
	_, targets := SRVNames(s.spec.Service, s.spec.Name)
	s.cur.Store(&servedPool{Pool: pool, targets: newTargetNames(pool.Records(), targets, prevNames, prevRecords)})
}

// UpdatePools rebuilds every pool from snap; call it for each new snapshot.
// A service the snapshot has not synced yet (a watcher just started, Consul
// not answering) keeps the targets it had: pools never empty because Consul
// went away.
func (h *Handler) UpdatePools(snap *health.Snapshot) {
	synced := map[string][]health.Target{}
	for _, hp := range snap.Pools() {
		if hp.Synced() {
			synced[hp.Name()] = hp.Targets()
		}
	}
	h.pools.update(&h.state, synced, time.Now())
}

// choice is one pool's answer to one query.
type choice struct {
	picked  []int
	ttl     uint32
	outcome policy.Outcome
	pool    *servedPool
}

// choose asks the pool of slot for the records of one answer, at most
// cap(dst) of them: the room the reply has (policy.MaxAnswers for all
// the pool may give), so that the ledger counts only records sent.
func choose(s *poolSlot, dst []int, qtype uint16, who netip.Prefix, shard int) choice {
	fam := policy.IPv4
	switch qtype {
	case dns.TypeAAAA:
		fam = policy.IPv6
	case dns.TypeSRV:
		fam = policy.AnyFamily
	}
	p := s.cur.Load()
	if p == nil {
		return choice{outcome: policy.OutcomeNoData}
	}
	picked, ttl, out := p.ChooseN(dst, fam, clientKey(who, s.spec.Name), time.Now().UnixNano(), cap(dst))
	s.outcomes[shard%len(s.outcomes)].n[out].Add(1)
	return choice{picked: picked, ttl: ttl, outcome: out, pool: p}
}

// clientKey names the asker for the policy's sticky choice: the network
// asker returns (a querier's /24 or /56, or the client subnet of its ECS
// option) and the name. The prefix length is part of the key, so an ECS
// /16 is not the /24 of the same first octets. Nothing is allocated.
func clientKey(who netip.Prefix, name string) uint64 {
	b := who.Addr().As16() // zeros for the zero Addr
	// FNV-1a
	h := uint64(14695981039346656037)
	for _, c := range b {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h = (h ^ uint64(who.Bits()+1)) * 1099511628211
	for i := 0; i < len(name); i++ {
		h = (h ^ uint64(name[i])) * 1099511628211
	}
	return h
}

// addressRR returns the A or AAAA record of target i of a choice.
func (c *choice) addressRR(name string, i int) dns.RR {
	hdr := dns.RR_Header{Name: name, Class: dns.ClassINET, Ttl: c.ttl}
	addr := c.pool.Records()[i].Address
	if addr.Is4() {
		hdr.Rrtype = dns.TypeA
		return &dns.A{Hdr: hdr, A: addr.AsSlice()}
	}
	hdr.Rrtype = dns.TypeAAAA
	return &dns.AAAA{Hdr: hdr, AAAA: addr.AsSlice()}
}

// appendAddressRecords appends the records of a choice in wire form, each
// owned by the question's name (a pointer to offset 12), at most n of them.
func (c *choice) appendAddressRecords(out []byte, n int) ([]byte, int) {
	records := c.pool.Records()
	written := 0
	for _, i := range c.picked {
		if written == n {
			break
		}
		out = appendAddressRR(out, headerLen, c.ttl, records[i].Address)
		written++
	}
	return out, written
}

// appendAddressRR appends, in wire form, the A record of an IPv4 address or
// the AAAA record of any other, as addressRR makes them, owned by a pointer
// to the name at offset owner.
func appendAddressRR(out []byte, owner int, ttl uint32, addr netip.Addr) []byte {
	t, l := dns.TypeAAAA, 16
	if addr.Is4() {
		t, l = dns.TypeA, 4
	}
	out = binary.BigEndian.AppendUint16(out, 0xC000|uint16(owner))
	out = binary.BigEndian.AppendUint16(out, t)
	out = binary.BigEndian.AppendUint16(out, dns.ClassINET)
	out = binary.BigEndian.AppendUint32(out, ttl)
	out = binary.BigEndian.AppendUint16(out, uint16(l))
	if addr.Is4() {
		a := addr.As4()
		return append(out, a[:]...)
	}
	a := addr.As16()
	return append(out, a[:]...)
}
