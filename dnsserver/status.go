package dnsserver

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
)

// PoolStatus is what an operator sees of one pool: on the status page, in
// /status.json, and in the _status TXT records.
type PoolStatus struct {
	Name      string            `json:"name"`
	Zone      string            `json:"zone"`
	Service   string            `json:"service"`
	LBService string            `json:"lb_service,omitempty"`
	Mode      string            `json:"mode"`
	Policy    string            `json:"policy"`
	Answers   int               `json:"answers"`
	TTL       int               `json:"ttl_seconds"`
	Outcomes  map[string]uint64 `json:"outcomes"`
	Targets   []TargetStatus    `json:"targets"`
}

// TargetStatus is one target (or, in shards mode, one LB) of a pool.
type TargetStatus struct {
	Node        string  `json:"node"`
	ServiceID   string  `json:"service_id"`
	Address     string  `json:"address"`
	Port        uint16  `json:"port"`
	LB          bool    `json:"lb,omitempty"`
	Shard       string  `json:"shard,omitempty"`
	Health      string  `json:"health"`
	Draining    bool    `json:"draining"`
	Eligible    bool    `json:"eligible"`
	Connections int64   `json:"connections"`
	Capacity    int64   `json:"capacity"`
	LoadState   string  `json:"load_state"`
	LoadSource  string  `json:"load_source"`
	ReportAge   float64 `json:"report_age_seconds,omitempty"` // KV reports only
	Predicted   float64 `json:"predicted_connections"`
	Answers     uint64  `json:"answers"`
	// LastAnswered and ExposureEnds tell when a draining target is safe to
	// stop: no answer naming it is cached (honouring the TTL) after ExposureEnds.
	LastAnswered  *time.Time `json:"last_answered,omitempty"`
	ExposureEnds  *time.Time `json:"exposure_ends,omitempty"`
	SlowStartEnds *time.Time `json:"slow_start_ends,omitempty"`
}

// PoolsStatus returns the state of every pool, for operators.
func (h *Handler) PoolsStatus(now time.Time) []PoolStatus {
	h.pools.mu.Lock()
	latest := h.pools.latest
	h.pools.mu.Unlock()
	var out []PoolStatus
	for _, s := range h.state.Load().pools {
		cfg := s.spec.Policy
		ps := PoolStatus{
			Name: s.spec.Name, Zone: s.spec.Zone, Service: s.spec.Service, LBService: s.spec.LBService,
			Mode: cfg.Mode.String(), Policy: cfg.Policy.String(), Answers: cfg.Answers, TTL: int(cfg.TTL / time.Second),
			Outcomes: map[string]uint64{},
		}
		for i := range s.outcomes[0].n {
			ps.Outcomes[policy.Outcome(i).String()] = s.outcome(policy.Outcome(i))
		}
		// Keyed by a struct, not "node/id", and sized up front: farmdns's
		// status sampler calls this every 5 s, pools of 50,000 targets included.
		byID := make(map[targetID]*health.Target, len(latest[s.spec.Service])+len(latest[s.spec.LBService]))
		for _, svc := range []string{s.spec.Service, s.spec.LBService} {
			for i, t := range latest[svc] {
				byID[targetID{t.Node, t.ServiceID}] = &latest[svc][i]
			}
		}
		if p := s.cur.Load(); p != nil {
			stats := p.Stats(now)
			ps.Targets = make([]TargetStatus, 0, len(stats))
			for _, st := range stats {
				ts := TargetStatus{
					Node: st.Node, ServiceID: st.ServiceID, LB: st.LB, Shard: st.Shard, Draining: st.Draining,
					Eligible: st.Eligible, Predicted: st.Predicted, Answers: st.Answers,
					LastAnswered: timeOrNil(st.LastAnswered), ExposureEnds: timeOrNil(st.ExposureEnds),
					SlowStartEnds: timeOrNil(st.SlowStartEnds),
				}
				if t := byID[targetID{st.Node, st.ServiceID}]; t != nil {
					ts.Address, ts.Port, ts.Health = t.Address.String(), t.Port, t.Health.String()
					ts.Connections, ts.Capacity = t.Load.Connections, t.Load.Capacity
					ts.LoadState, ts.LoadSource = t.Load.State.String(), t.Load.Source.String()
					if !t.Load.Updated.IsZero() {
						ts.ReportAge = now.Sub(t.Load.Updated).Seconds()
					}
				}
				ps.Targets = append(ps.Targets, ts)
			}
		}
		out = append(out, ps)
	}
	return out
}

// targetID names a target of a pool.
type targetID struct{ node, serviceID string }

func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	p := t // a copy, so that only a time actually returned goes to the heap
	return &p
}

// statusName is the debug name under each zone: TXT records of the zone's
// pools, to allowed clients (Options.StatusFrom), so that an operator can see
// with dig what farmdns sees.
const statusLabel = "_status."

// maxStatusOctets bounds the _status records, so that they fit one reply
// over TCP (65535 octets) with the header, the question and the OPT.
const maxStatusOctets = 60000

// statusTXT answers TXT _status.<zone> from an allowed client; ok is false
// when the question is something else, which then gets the usual answer.
// Each line is one record; a farm whose lines do not fit one reply gets
// those that fit, and a last line pointing to the status page.
func (h *Handler) statusTXT(st *State, q dns.Question, client netip.Addr) ([]dns.RR, bool) {
	if q.Qtype != dns.TypeTXT || q.Qclass != dns.ClassINET || !strings.HasPrefix(strings.ToLower(q.Name), statusLabel) || !allowed(st.Options.StatusFrom, client) {
		return nil, false
	}
	zone := strings.ToLower(q.Name[len(statusLabel):])
	if st.Zones.Find(zone) == nil || st.Zones.Find(zone).Origin != zone {
		return nil, false
	}
	var lines []string
	add := func(format string, args ...any) { lines = append(lines, fmt.Sprintf(format, args...)) }
	for _, p := range h.PoolsStatus(time.Now()) {
		if p.Zone != zone {
			continue
		}
		add("pool=%s service=%s mode=%s policy=%s targets=%d answer=%d fail-open=%d nodata=%d servfail=%d",
			p.Name, p.Service, p.Mode, p.Policy, len(p.Targets),
			p.Outcomes["answer"], p.Outcomes["fail-open"], p.Outcomes["nodata"], p.Outcomes["servfail"])
		for _, t := range p.Targets {
			role := "node"
			if t.LB {
				role = "lb"
			}
			add("pool=%s %s=%s/%s addr=%s health=%s draining=%t eligible=%t conns=%d cap=%d load=%s predicted=%.0f answers=%d",
				p.Name, role, t.Node, t.ServiceID, t.Address, t.Health, t.Draining, t.Eligible,
				t.Connections, t.Capacity, t.LoadState, t.Predicted, t.Answers)
		}
	}
	if len(lines) == 0 {
		add("no pools in %s", zone)
	}
	var rrs []dns.RR
	size := 0
	for i, line := range lines {
		rr, n := statusRecord(q.Name, line)
		if size+n > maxStatusOctets {
			rr, _ = statusRecord(q.Name, fmt.Sprintf("%d more lines: see the status page (/status) of the HTTP listener", len(lines)-i))
			rrs = append(rrs, rr)
			break
		}
		rrs = append(rrs, rr)
		size += n
	}
	return rrs, true
}

// statusRecord returns a TXT record of one line, split into strings of at
// most 255 octets (RFC 1035 section 3.3), and its length in a reply where
// its owner is a pointer to the question.
func statusRecord(owner, line string) (*dns.TXT, int) {
	rr := &dns.TXT{Hdr: dns.RR_Header{Name: owner, Rrtype: dns.TypeTXT, Class: dns.ClassINET}}
	n := 2 + 10
	for len(line) > 0 || len(rr.Txt) == 0 {
		chunk := line[:min(len(line), 255)]
		line = line[len(chunk):]
		// miekg/dns reads a backslash in a string as an escape.
		rr.Txt = append(rr.Txt, strings.ReplaceAll(chunk, `\`, `\\`))
		n += 1 + len(chunk)
	}
	return rr, n
}

// allowed reports whether client a is in one of the prefixes from. An IPv4
// address written IPv4-mapped (::ffff:192.0.2.1) is the same address: a
// client arrives that way on a dual-stack socket, and an operator may write
// an entry that way, so both sides are compared as IPv4.
func allowed(from []netip.Prefix, a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range from {
		if unmapPrefix(p).Contains(a) {
			return true
		}
	}
	return false
}

// unmapPrefix turns an IPv4-mapped prefix (::ffff:192.0.2.0/120) into the
// IPv4 prefix it covers (192.0.2.0/24); any other prefix is returned as is.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	p = p.Masked()
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		return netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p
}
