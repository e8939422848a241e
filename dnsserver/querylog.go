package dnsserver

import (
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// queryLog writes one structured line for a sample of queries. It is off
// until switched on (SIGUSR1 or the HTTP endpoint), and sampled so that it can
// stay on under load without the log becoming the bottleneck.
type queryLog struct {
	every atomic.Uint32 // log one query in every; 0: off
	seen  atomic.Uint32
}

func (q *queryLog) sample() bool {
	every := q.every.Load()
	return every > 0 && q.seen.Add(1)%every == 0
}

func (q *queryLog) write(log *slog.Logger, req request, out []byte, info replyInfo) {
	var r dns.Msg
	r.Unpack(out) // a partial parse still names the question
	qname, qtype := "", dns.Type(info.qtype).String()
	if len(r.Question) > 0 {
		qname = r.Question[0].Name
	}
	proto := "udp"
	if req.tcp {
		proto = "tcp"
	}
	path := "slow"
	if info.fast {
		path = "fast"
	}
	answers := make([]string, 0, len(r.Answer))
	for _, rr := range r.Answer {
		answers = append(answers, dns.Field(rr, 1))
	}
	log.Info("query", "client", req.remote, "proto", proto, "qname", qname, "qtype", qtype,
		"rcode", rcodeName(info.rcode), "answers", answers, "tc", info.truncated,
		"path", path, "latency", time.Since(req.start))
}
