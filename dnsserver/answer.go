package dnsserver

import (
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

// answer is the core of the server: a parsed query in, the full response out
// (before truncation), with the zone that answered (noZone if none) and the
// number of pool records that end the answer section. It never fails: every
// problem is an rcode.
func answer(st *State, q *dns.Msg, req request) (r *dns.Msg, zone string, dynamic int) {
	r, dynamic = answerIn(st, q, req)
	zone = noZone
	if len(r.Question) == 1 && r.Rcode != dns.RcodeRefused {
		if z := st.Zones.Find(strings.ToLower(r.Question[0].Name)); z != nil {
			zone = z.Origin
		}
	}
	return r, zone, dynamic
}

func answerIn(st *State, q *dns.Msg, req request) (*dns.Msg, int) {
	r := reply(q)
	opt, ecs, rcode := checkEDNS(q, req.wire, st)
	switch {
	case q.Opcode != dns.OpcodeQuery:
		return withRcode(r, dns.RcodeNotImplemented, opt, ecs, st), 0
	case len(q.Question) != 1:
		return withRcode(r, dns.RcodeFormatError, opt, ecs, st), 0
	case rcode != dns.RcodeSuccess:
		return withRcode(r, rcode, opt, ecs, st), 0
	}
	question := q.Question[0]
	if question.Qtype == dns.TypeAXFR || question.Qtype == dns.TypeIXFR {
		// Transfers reach here only when they are not allowed (see serve).
		return withRcode(r, dns.RcodeRefused, opt, ecs, st), 0
	}
	switch question.Qclass {
	case dns.ClassINET, dns.ClassANY:
		// Class ANY asks for whatever class holds the name: here, only IN does.
	case dns.ClassCHAOS:
		return chaos(r, question, opt, ecs, st), 0
	default:
		return withRcode(r, dns.RcodeRefused, opt, ecs, st), 0
	}

	z := st.Zones.Find(strings.ToLower(question.Name))
	if z == nil {
		// Not our zone: an authoritative-only server refuses rather than
		// pointing anywhere (RFC 1034 section 4.3.1 leaves it to us).
		return withRcode(r, dns.RcodeRefused, opt, ecs, st), 0
	}
	res := z.Lookup(question.Name, question.Qtype)
	dynamic := 0
	r.Answer = res.Answer
	r.Extra = res.Extra
	switch res.Outcome {
	case zones.Success:
		r.Authoritative = true
	case zones.NoData:
		r.Authoritative = true
		r.Ns = []dns.RR{z.NegativeSOA()}
	case zones.NameError:
		r.Authoritative = true
		r.Rcode = dns.RcodeNameError
		r.Ns = []dns.RR{z.NegativeSOA()}
	case zones.Delegation:
		// A referral is not an authoritative answer, unless a CNAME chain in
		// our zone led to it: then the records we did answer are ours.
		r.Authoritative = len(res.Answer) > 0
		r.Ns = res.Ns
	case zones.NameTooLong:
		r.Authoritative = true
		r.Rcode = dns.RcodeYXDomain
	case zones.Dynamic:
		switch {
		case res.Label != "":
			answerSRVTarget(r, st, z, res, question.Qtype)
		case question.Qtype == dns.TypeSRV:
			dynamic = answerSRV(r, st, z, res, asker(req.remote, ecs), req.shard, room(q, r, opt, ecs, req.tcp, st))
		default:
			dynamic = answerPool(r, st, z, res, question.Qtype, asker(req.remote, ecs), req.shard, room(q, r, opt, ecs, req.tcp, st))
		}
	}
	if dynamic > 0 {
		// The records were chosen for this client's network (RFC 7871
		// section 7.2.1); every other answer is the same for all: scope 0.
		ecs = ecs.dependent()
	}
	return withOPT(r, opt, ecs, st), dynamic
}

// answerPool adds the records a pool chooses for the name a lookup ended on,
// as many as fit in room octets, and returns how many it added. The pool
// is asked for no more: its ledger counts the records it chose, and must
// count only those sent.
func answerPool(r *dns.Msg, st *State, z *zones.Zone, res zones.Result, qtype uint16, who netip.Prefix, shard, room int) int {
	owner := r.Question[0].Name
	if n := len(res.Answer); n > 0 {
		owner = res.Answer[n-1].(*dns.CNAME).Target // a chain led here
	}
	r.Authoritative = true
	fit := min(room/addressRRLen(qtype), policy.MaxAnswers)
	if fit < 1 {
		// Not one record fits: the client asks again over TCP, where the
		// choice is made. A partial chain must not be sent (RFC 2181
		// section 9).
		r.Answer, r.Truncated = nil, true
		return 0
	}
	var dst [policy.MaxAnswers]int
	c := choose(st.pools[res.Pool], dst[:0:fit], qtype, who, shard)
	switch c.outcome {
	case policy.OutcomeAnswer, policy.OutcomeFailOpen:
		for _, i := range c.picked {
			r.Answer = append(r.Answer, c.addressRR(owner, i))
		}
		return len(c.picked)
	case policy.OutcomeNoData:
		r.Ns = []dns.RR{z.NegativeSOA()}
	case policy.OutcomeServFail:
		// The operator asked for it: nothing healthy is better reported as a
		// failure, so resolvers try the other nameservers or serve stale.
		r.Authoritative = false
		r.Rcode = dns.RcodeServerFailure
	}
	return 0
}

// addressRRLen is the length of one pool record answering qtype: an A, or
// an AAAA for AAAA, whose owner is a pointer to the same name earlier in the
// reply (the question, or the target of the chain's last CNAME).
func addressRRLen(qtype uint16) int {
	if qtype == dns.TypeAAAA {
		return 2 + 10 + net.IPv6len
	}
	return 2 + 10 + net.IPv4len
}

// room is how many octets the reply r to q has left for a pool's records.
func room(q, r *dns.Msg, opt *dns.OPT, ecs subnet, tcp bool, st *State) int {
	return limit(q, tcp, st.Options.MaxUDPSize) - lenWithOPT(r, opt, ecs, st)
}

// lenWithOPT is the length of r once withOPT has added our OPT record.
func lenWithOPT(r *dns.Msg, opt *dns.OPT, ecs subnet, st *State) int {
	if opt == nil {
		return r.Len()
	}
	m := *r
	m.Extra = append(slices.Clip(r.Extra), responseOPT(opt, &st.Options, dns.RcodeSuccess, ecs)) // Clip: the zone's slice is shared
	return m.Len()
}

// reply starts a response to q: same ID, opcode and question, RD and CD
// copied (RFC 1035 section 4.1.1, RFC 4035 section 3.1.6).
func reply(q *dns.Msg) *dns.Msg {
	r := new(dns.Msg)
	r.Id = q.Id
	r.Response = true
	r.Opcode = q.Opcode
	r.RecursionDesired = q.RecursionDesired
	r.CheckingDisabled = q.CheckingDisabled
	r.Question = q.Question
	r.Compress = true
	return r
}

func withRcode(r *dns.Msg, rcode int, opt *dns.OPT, ecs subnet, st *State) *dns.Msg {
	r.Rcode = rcode
	return withOPT(r, opt, ecs, st)
}

// refuse answers a query with rcode and nothing else.
func refuse(q *dns.Msg, rcode int) *dns.Msg {
	opt, _ := checkOPT(q)
	r := reply(q)
	r.Rcode = rcode
	if opt != nil {
		r.Extra = append(r.Extra, responseOPT(opt, nil, rcode, subnet{}))
	}
	return r
}

// checkEDNS returns the query's OPT record and its ECS option (none when
// st's ECS is off: an option a server does not do is ignored, RFC 6891
// section 6.1.2), and the rcode for a broken one, as checkOPT, or FORMERR for a
// malformed ECS option, which is checked whether ECS is on or not: some
// malformed options fail to unpack anyway, and all of them should fail alike.
func checkEDNS(q *dns.Msg, wire []byte, st *State) (*dns.OPT, subnet, int) {
	opt, rcode := checkOPT(q)
	if opt == nil || rcode != dns.RcodeSuccess {
		return opt, subnet{}, rcode
	}
	ecs, ok := queryECS(wire)
	if !ok {
		return opt, subnet{}, dns.RcodeFormatError
	}
	if !st.Options.ECS {
		ecs = subnet{}
	}
	return opt, ecs, dns.RcodeSuccess
}

// checkOPT returns the query's OPT record, and the rcode for a broken one:
// FORMERR for more than one OPT or one not owned by the root (RFC 6891
// section 6.1.1), BADVERS for a version we do not speak.
func checkOPT(q *dns.Msg) (*dns.OPT, int) {
	var opt *dns.OPT
	for _, rr := range q.Extra {
		o, ok := rr.(*dns.OPT)
		if !ok {
			continue
		}
		if opt != nil || o.Hdr.Name != "." {
			return opt, dns.RcodeFormatError
		}
		opt = o
	}
	if opt != nil && opt.Version() != 0 {
		return opt, dns.RcodeBadVers
	}
	return opt, dns.RcodeSuccess
}

// withOPT adds our OPT record when the query had one: RFC 6891 section 7
// forbids it otherwise.
func withOPT(r *dns.Msg, opt *dns.OPT, ecs subnet, st *State) *dns.Msg {
	if opt != nil {
		r.Extra = append(r.Extra, responseOPT(opt, &st.Options, r.Rcode, ecs))
	} else if r.Rcode > 0xF {
		// An extended rcode cannot be sent without OPT; this cannot happen as
		// BADVERS comes only with an OPT, but never send a broken message.
		r.Rcode = dns.RcodeServerFailure
	}
	return r
}

// responseOPT builds our OPT record for a query's, with the query's ECS
// option echoed (unless the query was not understood). opts may be nil when
// only the rcode matters.
func responseOPT(q *dns.OPT, opts *Options, rcode int, ecs subnet) *dns.OPT {
	o := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	size := uint16(DefaultMaxUDPSize)
	if opts != nil && opts.MaxUDPSize != 0 {
		size = opts.MaxUDPSize
	}
	o.SetUDPSize(size)
	o.SetExtendedRcode(uint16(rcode))
	if q.Do() {
		o.SetDo() // echoed (RFC 3225 section 3)
	}
	if opts != nil && opts.nsid() != "" && rcode != dns.RcodeBadVers {
		for _, e := range q.Option {
			if e.Option() == dns.EDNS0NSID {
				o.Option = append(o.Option, &dns.EDNS0_NSID{Code: dns.EDNS0NSID, Nsid: hex.EncodeToString([]byte(opts.nsid()))})
				break
			}
		}
	}
	if ecs.sent && rcode != dns.RcodeBadVers && rcode != dns.RcodeFormatError {
		o.Option = append(o.Option, ecs.option())
	}
	return o
}

// chaos answers the CHAOS class names operators use to identify a server.
func chaos(r *dns.Msg, q dns.Question, opt *dns.OPT, ecs subnet, st *State) *dns.Msg {
	var value *string
	switch strings.ToLower(q.Name) {
	case "hostname.bind.", "id.server.":
		value = st.Options.Identity
	case "version.bind.", "version.server.":
		value = st.Options.Version
	}
	if value == nil || (q.Qtype != dns.TypeTXT && q.Qtype != dns.TypeANY) {
		return withRcode(r, dns.RcodeRefused, opt, ecs, st)
	}
	// Not AA: these names are not in any zone we are authoritative for.
	r.Answer = []dns.RR{&dns.TXT{
		Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassCHAOS},
		Txt: []string{*value},
	}}
	return withOPT(r, opt, ecs, st)
}
