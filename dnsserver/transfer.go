package dnsserver

import (
	"strings"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/zones"
)

func isTransfer(q *dns.Msg) bool {
	return q.Opcode == dns.OpcodeQuery && len(q.Question) == 1 &&
		(q.Question[0].Qtype == dns.TypeAXFR || q.Question[0].Qtype == dns.TypeIXFR)
}

// transferZone decides a zone transfer over TCP: the zone to send, or the
// rcode to refuse with (0 means: not a transfer after all, answer normally).
func (h *Handler) transferZone(st *State, q *dns.Msg, req request) (*zones.Zone, int) {
	if !allowed(st.Options.TransferFrom, req.remote) {
		return nil, dns.RcodeRefused
	}
	if _, _, rcode := checkEDNS(q, req.wire, st); rcode != dns.RcodeSuccess || q.Question[0].Qclass != dns.ClassINET {
		return nil, dns.RcodeSuccess
	}
	lname := strings.ToLower(q.Question[0].Name)
	z := st.Zones.Find(lname)
	if z == nil || z.Origin != lname {
		return nil, dns.RcodeNotAuth // RFC 5936 section 2.2.1
	}
	h.log.Info("zone transfer", "zone", z.Origin, "client", req.remote)
	return z, dns.RcodeSuccess
}

// transferChunk is how many octets of records go in one transfer message,
// well under the 64 KiB a TCP message can hold.
const transferChunk = 16 << 10

// transfer sends z as an AXFR (RFC 5936): the SOA, every record, the SOA
// again, in as many messages as it takes. An IXFR is answered the same way,
// which RFC 1995 section 4 allows.
func transfer(w writer, buf []byte, q *dns.Msg, z *zones.Zone) {
	opt, _ := checkOPT(q)
	records := append(z.All(), z.SOA())
	first := true
	for len(records) > 0 {
		r := reply(q)
		r.Authoritative = true
		if !first {
			r.Question = nil // only the first message carries it
		}
		size := 0
		n := 0
		for n < len(records) && (n == 0 || size+dns.Len(records[n]) <= transferChunk) {
			size += dns.Len(records[n])
			n++
		}
		r.Answer, records = records[:n], records[n:]
		if opt != nil {
			r.Extra = []dns.RR{responseOPT(opt, nil, dns.RcodeSuccess, subnet{})}
		}
		out, err := r.PackBuffer(buf)
		if err != nil || w.write(out) != nil {
			return
		}
		first = false
	}
}
