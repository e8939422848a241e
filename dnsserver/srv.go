package dnsserver

import (
	"crypto/sha256"
	"encoding/base32"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

// SRV answers: _<service>._tcp.<pool name> names the chosen targets with
// their Consul ports, weighted by headroom, so that SRV-aware clients
// balance too. An SRV target must be a host name, so each target gets one,
// <label>.nodes.<pool name>, answered with the target's address; the label
// is made from the node's name (see targetLabel).

// SRVTargetsLabel is the label under a pool's name that holds its SRV
// target names.
const SRVTargetsLabel = "nodes"

// A target's label comes from its own name (its node's, and its service ID
// where its node runs several targets of the pool), never from the names of
// other targets, so that it stays the same from one snapshot to the next
// whatever look-alikes come and go. A node that runs one target of the pool
// and whose name is already a host name label (lower case letters, digits
// and inner hyphens, at most 63 octets) is named by it. Any other target
// gets its name cleaned up and cut, then a hyphen and a hash of the exact
// name: web_1, web.1 and WEB_1 would all clean up to web-1, and long names
// that differ only past the cut would merge. A plain label never ends like
// a hashed one, so the two kinds never meet, and hashed labels differ
// unless 64 bits of SHA-256 do not.

// hashLen is the length of a label's hash: 64 bits in base32.
const hashLen = 13

// labelHash encodes a label's hash: lower case letters and digits.
var labelHash = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// targetLabel names a target with one DNS label. shared says its node runs
// several targets of the pool: then the service ID tells them apart.
func targetLabel(node, serviceID string, shared bool) string {
	if !shared && plainLabel(node) {
		return node
	}
	name, exact := node, node
	if shared {
		name, exact = node+"-"+serviceID, node+"\x00"+serviceID
	}
	sum := sha256.Sum256([]byte(exact))
	// Anything but a letter or digit becomes one hyphen, none at the start
	// or end: a host name label neither starts nor ends with one (RFC 952).
	prefix := make([]byte, 0, 63)
	for i := 0; i < len(name) && len(prefix) < 63-1-hashLen; i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		case len(prefix) == 0 || prefix[len(prefix)-1] == '-':
			continue
		default:
			c = '-'
		}
		prefix = append(prefix, c)
	}
	p := strings.TrimSuffix(string(prefix), "-")
	if p == "" {
		p = "x"
	}
	return p + "-" + labelHash.EncodeToString(sum[:8])
}

// plainLabel reports whether name can be a target's label as it is: a host
// name label in lower case that does not end like a hashed label.
func plainLabel(name string) bool {
	if name == "" || len(name) > 63 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return !hashedLabel(name)
}

// hashedLabel reports whether name ends like a label targetLabel hashed.
func hashedLabel(name string) bool {
	n := len(name) - hashLen
	if n < 2 || name[n-1] != '-' {
		return false
	}
	for i := n; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	return true
}

// targetNames holds the SRV target name of every target of one build of a
// pool, and finds a target by its label: built once per build, so that a
// query costs no more with 50,000 targets than with 5.
type targetNames struct {
	suffix  string           // "." + the name the labels are under
	under   []byte           // that name in wire form, for the fast path; nil if it needs escapes
	names   []string         // by record index: label + suffix
	byLabel map[string]int32 // record index by label
	// maxPair bounds the octets one SRV record and its address take in a
	// reply, so that an answer asks the pool for no more than fit.
	maxPair int
}

// newTargetNames names records, the targets of one build, under the name
// targets. prev is the names of the build before, of records prevRecords:
// when the targets are the same (a new snapshot brings new loads far more
// often than new targets), their names are too.
func newTargetNames(records []health.Target, targets string, prev *targetNames, prevRecords []health.Target) *targetNames {
	suffix := "." + targets
	addrLen := net.IPv4len
	for _, t := range records {
		if t.Address.Is6() {
			addrLen = net.IPv6len
			break
		}
	}
	if prev != nil && prev.suffix == suffix && sameTargets(records, prevRecords) {
		if n := *prev; n.setMaxPair(addrLen) {
			return &n // an address changed family: same names, another bound
		}
		return prev
	}
	perNode := make(map[string]int, len(records))
	for _, t := range records {
		perNode[t.Node]++
	}
	n := &targetNames{suffix: suffix, names: make([]string, len(records)), byLabel: make(map[string]int32, len(records))}
	var wire [256]byte
	if l, err := dns.PackDomainName(targets, wire[:], 0, nil, false); err == nil && l == len(targets)+1 {
		n.under = slices.Clone(wire[:l])
	}
	for i, t := range records {
		label := targetLabel(t.Node, t.ServiceID, perNode[t.Node] > 1)
		n.names[i] = label + suffix
		n.byLabel[n.names[i][:len(label)]] = int32(i)
	}
	n.setMaxPair(addrLen)
	return n
}

// setMaxPair sets maxPair for addresses of addrLen octets and reports
// whether it changed. The SRV record's owner is a pointer to a name earlier
// in the reply; its target is written whole (RFC 2782: no compression); the
// address record's owner points to that target.
func (n *targetNames) setMaxPair(addrLen int) bool {
	longest := 0
	for _, name := range n.names {
		longest = max(longest, len(name)+1) // sanitized labels: no escapes
	}
	pair := 2 + 10 + 6 + longest + 2 + 10 + addrLen
	if pair == n.maxPair {
		return false
	}
	n.maxPair = pair
	return true
}

// sameTargets reports whether a and b are the same targets in the same order.
func sameTargets(a, b []health.Target) bool {
	return slices.EqualFunc(a, b, func(x, y health.Target) bool {
		return x.Node == y.Node && x.ServiceID == y.ServiceID
	})
}

// find returns the index of the target labelled label, or -1.
func (n *targetNames) find(label string) int {
	if i, ok := n.byLabel[label]; ok {
		return int(i)
	}
	return -1
}

// answerSRV adds SRV records for the pool's choice, and their addresses, as
// many as fit in room octets, and returns how many it added. The pool is
// asked for no more: its ledger must count only the records sent.
func answerSRV(r *dns.Msg, st *State, z *zones.Zone, res zones.Result, who netip.Prefix, shard, room int) int {
	fit := policy.MaxAnswers
	if p := st.pools[res.Pool].cur.Load(); p != nil && p.targets.maxPair > 0 {
		fit = min(fit, room/p.targets.maxPair)
	}
	if fit < 1 {
		// Not one record fits: the client asks again over TCP.
		r.Answer, r.Authoritative, r.Truncated = nil, true, true
		return 0
	}
	var dst [policy.MaxAnswers]int
	c := choose(st.pools[res.Pool], dst[:0:fit], dns.TypeSRV, who, shard)
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
	for _, i := range c.picked {
		target := c.pool.targets.names[i]
		r.Answer = append(r.Answer, &dns.SRV{
			Hdr:    dns.RR_Header{Name: owner, Rrtype: dns.TypeSRV, Class: dns.ClassINET, Ttl: c.ttl},
			Weight: c.pool.Weight(i, now), Port: c.pool.Records()[i].Port, Target: target,
		})
		r.Extra = append(r.Extra, c.addressRR(target, i))
	}
	return len(c.picked)
}

// answerSRVTarget answers a name <label>.nodes.<pool name>: the target's
// address, NODATA for other types, NXDOMAIN for no such target.
func answerSRVTarget(r *dns.Msg, st *State, z *zones.Zone, res zones.Result, qtype uint16) {
	r.Authoritative = true
	p := st.pools[res.Pool].cur.Load()
	i := -1
	if p != nil {
		i = p.targets.find(res.Label)
	}
	if i < 0 {
		r.Rcode = dns.RcodeNameError
		r.Ns = []dns.RR{z.NegativeSOA()}
		return
	}
	want := dns.TypeA
	if p.Records()[i].Address.Is6() {
		want = dns.TypeAAAA
	}
	if qtype != want && qtype != dns.TypeANY {
		r.Ns = []dns.RR{z.NegativeSOA()}
		return
	}
	c := choice{pool: p, ttl: uint32(p.Config().TTL / time.Second)}
	r.Answer = append(r.Answer, c.addressRR(chainEnd(r.Question[0].Name, res), i))
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
