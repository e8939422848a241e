package dnsserver

import (
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// pack packs r into buf so that it fits in limit octets. Additional records
// are dropped first: they are optional, except the glue of a referral, whose
// loss sets TC so the resolver asks again over TCP (RFC 9471). If the answer
// or authority section does not fit either, both are emptied and TC is set:
// a partial RRset must never be sent (RFC 2181 section 9).
//
// dynamic counts the pool records at the end of the answer section: those
// are dropped, down to one, before anything else, since a smaller answer
// serves the client better than a truncated one. A dropped SRV record takes
// its target's address with it: nothing else in the answer names it.
func pack(r *dns.Msg, buf []byte, limit, dynamic int) ([]byte, error) {
	out, err := r.PackBuffer(buf)
	for ; err == nil && len(out) > limit && dynamic > 1; dynamic-- {
		last := r.Answer[len(r.Answer)-1]
		r.Answer = r.Answer[:len(r.Answer)-1]
		if srv, ok := last.(*dns.SRV); ok {
			r.Extra = withoutOwner(r.Extra, srv.Target)
		}
		out, err = r.PackBuffer(buf)
	}
	if err != nil || len(out) <= limit {
		return out, err
	}
	opt := r.IsEdns0()
	if len(r.Extra) > 0 && (opt == nil || len(r.Extra) > 1) {
		referral := !r.Authoritative && len(r.Ns) > 0 && r.Ns[0].Header().Rrtype == dns.TypeNS
		r.Extra = nil
		if opt != nil {
			r.Extra = []dns.RR{opt}
		}
		r.Truncated = referral
		if out, err = r.PackBuffer(buf); err != nil || len(out) <= limit {
			return out, err
		}
	}
	r.Answer, r.Ns = nil, nil
	r.Truncated = true
	return r.PackBuffer(buf)
}

// withoutOwner returns a copy of rrs without the records owned by name. It
// copies so that a slice shared with a zone is never changed.
func withoutOwner(rrs []dns.RR, name string) []dns.RR {
	return slices.DeleteFunc(slices.Clone(rrs), func(rr dns.RR) bool {
		return strings.EqualFold(rr.Header().Name, name)
	})
}
