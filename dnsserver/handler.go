// Package dnsserver speaks the DNS wire protocol: it reads queries from UDP and
// TCP, answers them from the zones, and applies EDNS, truncation and the other
// transport rules of an authoritative server.
package dnsserver

import (
	"encoding/binary"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/farmdns/farmdns/zones"
)

// Options are the protocol settings of one configuration.
type Options struct {
	// NSID is returned to clients that ask for it (RFC 5001); empty, or
	// longer than MaxNSID octets: not returned.
	NSID string
	// Identity answers CHAOS TXT hostname.bind and id.server; nil: refused.
	Identity *string
	// Version answers CHAOS TXT version.bind and version.server; nil: refused.
	Version *string
	// MaxUDPSize caps the UDP payload size a client may ask for; it is also
	// the size advertised in our OPT record. 1232 avoids IP fragmentation on
	// every common path (DNS flag day 2020).
	MaxUDPSize uint16
	// TransferFrom lists the clients that may transfer zones (AXFR over TCP).
	TransferFrom []netip.Prefix
	// StatusFrom lists the clients that may ask TXT _status.<zone>.
	StatusFrom []netip.Prefix
	// ECS makes a query's EDNS Client Subnet option (RFC 7871) the asker
	// of a pool's choice, and echoes it with the scope the answer depends
	// on; off, the option is ignored. A malformed one is FORMERR either way.
	ECS bool
}

// DefaultMaxUDPSize is the default of Options.MaxUDPSize.
const DefaultMaxUDPSize = 1232

// MaxNSID is the longest NSID sent. An identifier needs no more, and it
// leaves a 512-octet reply room for the longest question, the OPT record
// and six A records.
const MaxNSID = 128

// nsid returns the NSID to send to a client that asks for it; "" for none.
func (o *Options) nsid() string {
	if len(o.NSID) > MaxNSID {
		return ""
	}
	return o.NSID
}

// State is everything one configuration serves. It is immutable: a reload
// builds a new State and swaps it in whole.
type State struct {
	Zones   *zones.Set
	Options Options
	// ConsulDNS, when set, answers the names of its Consul DNS domains.
	ConsulDNS ConsulDNS

	prepared *prepared   // nil: every query takes the slow path
	pools    []*poolSlot // by the zones' binding numbers
}

// NewState builds the state for zs, opts and the pools the zones' bindings
// number (binding Pool i is pools[i]), with the ready-made replies of the
// fast path; that takes a while for a large zone, which is why it happens
// here, before the state is swapped in, and not on the query path.
func NewState(zs *zones.Set, opts Options, pools ...PoolSpec) *State {
	st := &State{Zones: zs, Options: opts, pools: newSlots(pools)}
	st.prepared = prepare(st)
	return st
}

// Handler answers DNS messages from the current State. It is safe for
// concurrent use; the query path takes no locks.
type Handler struct {
	state    atomic.Pointer[State]
	log      *slog.Logger
	panics   atomic.Uint64
	metrics  *metrics
	queryLog queryLog
	pools    pools
}

// NewHandler returns a handler serving st.
func NewHandler(st *State, log *slog.Logger) *Handler {
	h := &Handler{log: log, metrics: newMetrics()}
	h.metrics.addZones(st)
	h.pools.swap(&h.state, st, time.Now())
	return h
}

// Swap makes st the state that new queries are answered from. Queries already
// being answered finish with the state they started with.
func (h *Handler) Swap(st *State) {
	h.metrics.addZones(st)
	// The new state's pools start from the latest snapshot and keep the
	// answer ledgers of the pools they replace.
	h.pools.swap(&h.state, st, time.Now())
}

// Panics returns how many queries made the handler panic.
func (h *Handler) Panics() uint64 { return h.panics.Load() }

// SetQueryLog logs one query in every (0: none) at info level, from now on.
func (h *Handler) SetQueryLog(every uint32) { h.queryLog.every.Store(every) }

// QueryLog returns the query log's sampling: one query in every; 0 when off.
func (h *Handler) QueryLog() uint32 { return h.queryLog.every.Load() }

// State returns the state being served.
func (h *Handler) State() *State { return h.state.Load() }

// writer sends responses back over the transport a query came in on.
type writer interface {
	// write sends one whole DNS message.
	write(msg []byte) error
}

// request is one query as read off the wire.
type request struct {
	wire   []byte
	tcp    bool
	remote netip.Addr
	start  time.Time // when the query was read
	shard  int       // the reader's own metrics counters (see metrics.go)
}

// serve answers one query. buf is scratch space for the response.
func (h *Handler) serve(w writer, buf []byte, req request) {
	defer func() {
		if v := recover(); v != nil {
			h.panics.Add(1)
			// miekg/dns does not recover handler panics, and one bad query must
			// not take the server down: answer SERVFAIL and keep going.
			h.log.Error("panic answering a query", "panic", v, "stack", string(debug.Stack()))
			if resp := headerOnly(buf, req.wire, dns.RcodeServerFailure); resp != nil {
				w.write(resp)
			}
		}
	}()
	logged := h.queryLog.sample()
	if logged && req.start.IsZero() {
		req.start = time.Now()
	}
	out, info := h.respond(w, buf, req)
	if out != nil {
		w.write(out)
	}
	if info.answered {
		h.metrics.count(req.shard, info.zone, req.tcp, info.qtype, info.rcode, info.truncated, req.start)
		if logged {
			h.queryLog.write(h.log, req, out, info)
		}
	}
}

// replyInfo says what a reply was, for metrics and the query log.
type replyInfo struct {
	answered  bool // false: the packet was dropped
	zone      string
	qtype     uint16
	rcode     int
	truncated bool
	fast      bool
}

// respond works out the reply to one query. It returns nil for no reply, or
// for a zone transfer, which it writes itself as several messages.
func (h *Handler) respond(w writer, buf []byte, req request) ([]byte, replyInfo) {
	st := h.state.Load()
	if len(req.wire) < headerLen || req.wire[2]&0x80 != 0 {
		return nil, replyInfo{} // not a query: answering responses invites loops
	}
	if st.prepared != nil {
		if out, info, ok := fastAnswer(st, buf, req); ok {
			return out, info
		}
	}
	m := new(dns.Msg)
	if !wellFormed(req.wire) || m.Unpack(req.wire) != nil {
		return headerOnly(buf, req.wire, dns.RcodeFormatError), replyInfo{answered: true, zone: noZone, rcode: dns.RcodeFormatError}
	}
	if out, info, ok := consulAnswer(st, m, req, buf); ok {
		return out, info
	}
	info := replyInfo{answered: true, zone: noZone}
	if len(m.Question) > 0 {
		info.qtype = m.Question[0].Qtype
	}
	if isTransfer(m) && req.tcp {
		if z, rcode := h.transferZone(st, m, req); z != nil {
			info.zone = z.Origin
			transfer(w, buf, m, z)
			return nil, info
		} else if rcode != dns.RcodeSuccess {
			info.rcode = rcode
			out, _ := refuse(m, rcode).PackBuffer(buf)
			return out, info
		}
	}
	if len(m.Question) == 1 && m.Opcode == dns.OpcodeQuery {
		if rrs, ok := h.statusTXT(st, m.Question[0], req.remote); ok {
			// A broken OPT or ECS option is answered below, as for any name.
			if opt, ecs, rcode := checkEDNS(m, req.wire, st); rcode == dns.RcodeSuccess {
				r := reply(m)
				r.Authoritative, r.Answer = true, rrs
				out, err := pack(withOPT(r, opt, ecs, st), buf, limit(m, req.tcp, st.Options.MaxUDPSize), 0)
				if err != nil {
					out = headerOnly(buf, req.wire, dns.RcodeServerFailure)
				}
				info.zone, info.truncated = strings.ToLower(m.Question[0].Name[len(statusLabel):]), r.Truncated
				return out, info
			}
		}
	}
	resp, zone, dynamic := answer(st, m, req)
	out, err := pack(resp, buf, limit(m, req.tcp, st.Options.MaxUDPSize), dynamic)
	if err != nil {
		h.log.Error("packing a response", "question", m.Question, "err", err)
		resp.Rcode = dns.RcodeServerFailure
		out = headerOnly(buf, req.wire, dns.RcodeServerFailure)
	}
	info.zone, info.rcode, info.truncated = zone, resp.Rcode, resp.Truncated
	return out, info
}

const headerLen = 12

// headerOnly builds a response with no sections from the query's header: for
// queries too broken to answer otherwise. It needs only the 12 header octets.
func headerOnly(buf, query []byte, rcode int) []byte {
	if len(query) < headerLen {
		return nil
	}
	out := append(buf[:0], query[:headerLen]...)
	// QR set, opcode and RD kept, everything else cleared.
	out[2] = 0x80 | query[2]&0x79
	out[3] = byte(rcode & 0xF)
	binary.BigEndian.PutUint64(out[4:], 0)
	return out
}

// limit returns the largest response the client can take.
func limit(q *dns.Msg, tcp bool, maxUDP uint16) int {
	if tcp {
		return dns.MaxMsgSize
	}
	opt := q.IsEdns0()
	if opt == nil {
		return dns.MinMsgSize // RFC 1035: 512 octets without EDNS
	}
	// RFC 6891 section 6.2.5: sizes below 512 are treated as 512.
	return int(max(dns.MinMsgSize, min(opt.UDPSize(), maxUDP)))
}
