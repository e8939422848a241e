package dnsserver

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

// SRV answers: _<service>._tcp.<pool name> names the chosen targets with
// their Consul ports, weighted by headroom, so that SRV-aware clients
// balance too. An SRV target must be a host name, so each target gets one:
// <node>.nodes.<pool name> (<node>-<service ID> where a node has several),
// answered with the target's address.

// SRVTargetsLabel is the label under a pool's name that holds its SRV
// target names.
const SRVTargetsLabel = "nodes"

// hostLabel turns a Consul node name into one DNS label: letters, digits
// and hyphens, lower case, at most 63 octets.
func hostLabel(node string) string {
	b := make([]byte, 0, min(len(node), 63))
	for i := 0; i < len(node) && len(b) < 63; i++ {
		c := node[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-':
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		default:
			c = '-'
		}
		b = append(b, c)
	}
	return string(b)
}

// targetLabels names each target of records with one DNS label: its node's
// name, and where a node runs several targets, the node's and the service
// ID's (a dev agent, say, holds every instance on one node).
func targetLabels(records []health.Target) []string {
	perNode := map[string]int{}
	for _, t := range records {
		perNode[t.Node]++
	}
	labels := make([]string, len(records))
	for i, t := range records {
		if perNode[t.Node] > 1 {
			labels[i] = hostLabel(t.Node + "-" + t.ServiceID)
		} else {
			labels[i] = hostLabel(t.Node)
		}
	}
	return labels
}

// answerSRV adds SRV records for the pool's choice, and their addresses.
func answerSRV(r *dns.Msg, st *State, z *zones.Zone, res zones.Result, client netip.Addr) int {
	s := st.pools[res.Pool]
	var dst [policy.MaxAnswers]int
	c := choose(s, dst[:0], dns.TypeSRV, client)
	r.Authoritative = true
	switch c.outcome {
	case policy.OutcomeNoData:
		r.Ns = []dns.RR{z.NegativeSOA()}
		return 0
	case policy.OutcomeServFail:
		r.Authoritative = false
		r.Rcode = dns.RcodeServerFailure
		return 0
	}
	owner := chainEnd(r.Question[0].Name, res)
	now := time.Now().UnixNano()
	labels := targetLabels(c.pool.Records())
	_, targets := SRVNames(s.spec.Service, s.spec.Name)
	for _, i := range c.picked {
		t := &c.pool.Records()[i]
		target := labels[i] + "." + targets
		r.Answer = append(r.Answer, &dns.SRV{
			Hdr:    dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: c.ttl},
			Weight: c.pool.Weight(i, now), Port: t.Port, Target: target,
		})
		r.Extra = append(r.Extra, c.addressRR(target, i))
	}
	return len(c.picked)
}

// answerSRVTarget answers a name <node>.nodes.<pool name>: the node's
// address, NODATA for other types, NXDOMAIN for no such node.
func answerSRVTarget(r *dns.Msg, st *State, z *zones.Zone, res zones.Result, qtype uint16) {
	r.Authoritative = true
	p := st.pools[res.Pool].cur.Load()
	if p != nil {
		labels := targetLabels(p.Records())
		for i, t := range p.Records() {
			if labels[i] != res.Label {
				continue
			}
			want := dns.TypeA
			if t.Address.Is6() {
				want = dns.TypeAAAA
			}
			if qtype == want || qtype == dns.TypeANY {
				c := choice{pool: p, ttl: uint32(p.Config().TTL / time.Second)}
				r.Answer = append(r.Answer, c.addressRR(chainEnd(r.Question[0].Name, res), i))
			} else {
				r.Ns = []dns.RR{z.NegativeSOA()}
			}
			return
		}
	}
	r.Rcode = dns.RcodeNameError
	r.Ns = []dns.RR{z.NegativeSOA()}
}

// chainEnd returns the name that owns a lookup's records: the question's, or
// where a CNAME chain in the zone led, since a name with a CNAME holds no
// other data (RFC 1034 section 3.6.2).
func chainEnd(qname string, res zones.Result) string {
	if n := len(res.Answer); n > 0 {
		return res.Answer[n-1].(*dns.CNAME).Target
	}
	return qname
}

// SRVNames returns, for a pool's name and its service, the name of its SRV
// records and the name under which its SRV targets are.
func SRVNames(service, pool string) (srv, targets string) {
	return "_" + strings.ToLower(service) + "._tcp." + pool, SRVTargetsLabel + "." + pool
}
