package dnsserver

import (
	"net/netip"

	"github.com/miekg/dns"
)

// ConsulDNS answers the names of Consul DNS domains (consul. and the like)
// as Consul's own DNS interface would; package consuldns implements it.
type ConsulDNS interface {
	// Answer returns the reply to q, asked by client, and the domain that
	// answered it, or false when q is not for it.
	Answer(q *dns.Msg, tcp bool, client netip.Addr) (reply *dns.Msg, domain string, ok bool)
}

// consulAnswer answers m when it is for the state's Consul DNS domains. The
// reply is packed as it is: Consul's answers are already fitted to the
// client's buffer, by Consul's rules (which never set TC).
func consulAnswer(st *State, m *dns.Msg, req request, buf []byte) ([]byte, replyInfo, bool) {
	if st.ConsulDNS == nil {
		return nil, replyInfo{}, false
	}
	resp, domain, ok := st.ConsulDNS.Answer(m, req.tcp, req.remote)
	if !ok {
		return nil, replyInfo{}, false
	}
	info := replyInfo{answered: true, zone: domain, rcode: resp.Rcode, qtype: m.Question[0].Qtype}
	out, err := resp.PackBuffer(buf)
	if err != nil {
		info.rcode = dns.RcodeServerFailure
		return headerOnly(buf, req.wire, dns.RcodeServerFailure), info, true
	}
	return out, info, true
}
