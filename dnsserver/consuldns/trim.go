package consuldns

import (
	"strings"

	"github.com/miekg/dns"
)

// setEDNS answers an EDNS query with an OPT record echoing the client's
// buffer size, and its client subnet with a scope: 0 when the answer holds
// for every client (global) or is an error, the source prefix otherwise.
func setEDNS(req, m *dns.Msg, global bool) {
	in := req.IsEdns0()
	if in == nil {
		return
	}
	opt := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
	opt.SetUDPSize(in.UDPSize())
	for _, o := range in.Option {
		subnet, ok := o.(*dns.EDNS0_SUBNET)
		if !ok {
			continue
		}
		out := &dns.EDNS0_SUBNET{
			Code: dns.EDNS0SUBNET, Family: subnet.Family, Address: subnet.Address,
			SourceNetmask: subnet.SourceNetmask, SourceScope: subnet.SourceNetmask,
		}
		switch m.Rcode {
		case dns.RcodeNameError, dns.RcodeServerFailure, dns.RcodeRefused, dns.RcodeNotImplemented:
			out.SourceScope = 0
		}
		if global {
			out.SourceScope = 0
		}
		opt.Option = append(opt.Option, out)
		break
	}
	m.Extra = append(m.Extra, opt)
}

// trimUDP fits an answer to a UDP client the way Consul does, which clients
// have come to rely on: without EDNS (or with a buffer of 512 or less) at
// most udpLimit answers, measured uncompressed; then answers are dropped
// until the message fits the buffer. TC is never set. When answers go, the
// additional section is rebuilt to the kept SRV targets' first records,
// which drops the node meta TXT and the OPT record.
func trimUDP(req, m *dns.Msg, udpLimit int) {
	size := 512
	if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = int(opt.UDPSize())
	}
	size = min(size, maxUDPSize)
	index := &extraIndex{rrs: m.Extra}
	compress := m.Compress
	if limit := min(maxUDPAnswers, udpLimit); size == 512 && len(m.Answer) > limit {
		m.Compress = false
		m.Answer = m.Answer[:limit]
		if idx := index.get(); idx != nil {
			m.Extra = targetsExtra(idx, m.Answer)
		}
	}
	shrink(m, size-8, size, index)
	m.Compress = compress
}

// trimTCP keeps an answer within the 64 KiB a TCP message can carry.
func trimTCP(qtype uint16, m *dns.Msg) {
	most := 4096
	if qtype == dns.TypeSRV {
		most = 1024 // more SRV records cannot fit
	}
	if len(m.Answer) > most {
		m.Answer = m.Answer[:most]
	}
	shrink(m, maxTCPSize, maxTCPSize, &extraIndex{rrs: m.Extra})
}

// shrink drops answers (keeping at least one) until m packs to limit
// octets, searching for the count by bisection when far over. (Consul drops
// the authority section first, but no answer of several records has one.)
func shrink(m *dns.Msg, limit, searchLimit int, x *extraIndex) {
	for len(m.Answer) > 1 && m.Len() > limit {
		index := x.get()
		if m.Len()-searchLimit > 100 {
			m.Answer = m.Answer[:fit(m, searchLimit, index)]
		} else {
			m.Answer = m.Answer[:len(m.Answer)-1]
		}
		if index != nil {
			m.Extra = targetsExtra(index, m.Answer)
		}
	}
}

// fit returns the most answers of m that pack to at most limit octets.
func fit(m *dns.Msg, limit int, index map[string]dns.RR) int {
	all := m.Answer
	lo, hi := 0, len(all) // lo fits (or is 0); hi+1 does not
	for lo < hi {
		mid := (lo + hi + 1) / 2
		m.Answer = all[:mid]
		if index != nil {
			m.Extra = targetsExtra(index, m.Answer)
		}
		if m.Len() <= limit {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	m.Answer = all
	return lo
}

// extraIndex is an additional section's indexByName, built on first use:
// most answers fit and never need it.
type extraIndex struct {
	rrs   []dns.RR
	index map[string]dns.RR
	built bool
}

func (x *extraIndex) get() map[string]dns.RR {
	if !x.built {
		x.index, x.built = indexByName(x.rrs), true
	}
	return x.index
}

// indexByName maps each lower-case owner name to its first record, or
// returns nil for an empty section.
func indexByName(rrs []dns.RR) map[string]dns.RR {
	if len(rrs) == 0 {
		return nil
	}
	index := make(map[string]dns.RR, len(rrs))
	for _, rr := range rrs {
		name := strings.ToLower(rr.Header().Name)
		if _, ok := index[name]; !ok {
			index[name] = rr
		}
	}
	return index
}

// targetsExtra returns, for each SRV target in answer, its first record in
// index, following CNAMEs.
func targetsExtra(index map[string]dns.RR, answer []dns.RR) []dns.RR {
	extra := make([]dns.RR, 0, len(answer))
	done := make(map[string]bool, len(answer))
	for _, rr := range answer {
		srv, ok := rr.(*dns.SRV)
		if !ok {
			continue
		}
		for name := strings.ToLower(srv.Target); !done[name]; {
			done[name] = true
			next, ok := index[name]
			if !ok {
				break
			}
			extra = append(extra, next)
			cname, ok := next.(*dns.CNAME)
			if !ok {
				break
			}
			name = strings.ToLower(cname.Target)
		}
	}
	return extra
}
