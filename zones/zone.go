// Package zones holds authoritative zone data: RFC 1035 master files parsed into
// immutable in-memory snapshots, and the lookup that turns a question into an
// outcome (never an rcode: the DNS server maps outcomes to rcodes in one place).
package zones

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"
)

// Zone is one parsed zone. It is immutable once built: a reload parses a whole
// new Zone and swaps it in, so readers never lock.
type Zone struct {
	// Origin is the zone apex, as CanonicalName spells it.
	Origin string
	// File is where the zone was read from, for messages.
	File string

	soa   *dns.SOA
	nodes map[string]*node // by owner name, as CanonicalName spells it
	// records counts the resource records, for summaries.
	records int
}

// node is one owner name. A node with no rrsets is an empty non-terminal.
type node struct {
	rrsets []rrset // sorted by type
	// cut marks a delegation point: NS records at a name below the apex.
	cut bool
	// dynamic lists the types answered from a pool rather than from rrsets.
	dynamic []Binding
}

// Binding makes some types of one name dynamic: the DNS server answers them
// from a load-balancing pool instead of the zone file.
type Binding struct {
	// Name is the owner, absolute or relative to the origin ("@": the apex).
	Name string
	// Types are the types answered from the pool, such as A and AAAA.
	Types []uint16
	// Pool identifies the pool; zones only hands it back in a Result.
	Pool int
	// Children makes the names one label below Name dynamic instead, for
	// every type (the SRV targets of a pool, one name per node); the label
	// comes back in Result.Label. Types is ignored.
	Children bool
}

func (n *node) binding(t uint16) (int, bool) {
	for _, b := range n.dynamic {
		if !b.Children && slices.Contains(b.Types, t) {
			return b.Pool, true
		}
	}
	return 0, false
}

func (n *node) childBinding() (int, bool) {
	for _, b := range n.dynamic {
		if b.Children {
			return b.Pool, true
		}
	}
	return 0, false
}

type rrset struct {
	typ uint16
	rrs []dns.RR
}

func (n *node) get(t uint16) []dns.RR {
	for i := range n.rrsets {
		if n.rrsets[i].typ == t {
			return n.rrsets[i].rrs
		}
	}
	return nil
}

// SOA returns the zone's SOA record.
func (z *Zone) SOA() *dns.SOA { return z.soa }

// NegativeSOA returns the SOA record to put in the authority section of a
// negative answer. Its TTL is min(SOA TTL, SOA MINIMUM): RFC 2308 section 3
// says resolvers cache the negative answer for that long.
func (z *Zone) NegativeSOA() *dns.SOA {
	soa := *z.soa
	soa.Hdr.Ttl = min(soa.Hdr.Ttl, soa.Minttl)
	return &soa
}

// Records returns the number of resource records in the zone.
func (z *Zone) Records() int { return z.records }

// Names returns the number of owner names, empty non-terminals included.
func (z *Zone) Names() int { return len(z.nodes) }

// All returns every record of the zone, SOA first, in a stable order: what a
// zone transfer sends between the two SOA records.
func (z *Zone) All() []dns.RR {
	names := make([]ordered, 0, len(z.nodes))
	for name := range z.nodes {
		names = append(names, ordered{name, wireLabels(name)})
	}
	slices.SortFunc(names, compareCanonical)
	all := make([]dns.RR, 0, z.records)
	all = append(all, z.soa)
	for _, name := range names {
		for _, set := range z.nodes[name.name].rrsets {
			if set.typ != dns.TypeSOA {
				all = append(all, set.rrs...)
			}
		}
	}
	return all
}

// ordered is a name with its labels as octets, for sorting.
type ordered struct {
	name   string
	labels []string // left to right, escapes undone
}

// wireLabels splits name, as CanonicalName spells it, into its labels.
func wireLabels(name string) []string {
	var wire [256]byte
	n, _ := dns.PackDomainName(name, wire[:], 0, nil, false)
	var labels []string
	for off := 0; off < n && wire[off] != 0; off += 1 + int(wire[off]) {
		labels = append(labels, string(wire[off+1:off+1+int(wire[off])]))
	}
	return labels
}

// compareCanonical orders names as RFC 4034 section 6.1 does: label by label
// from the right, each label as a string of octets (so `\001` sorts before
// `*`, though a backslash does not).
func compareCanonical(a, b ordered) int {
	la, lb := a.labels, b.labels
	for i, j := len(la)-1, len(lb)-1; i >= 0 && j >= 0; i, j = i-1, j-1 {
		if c := strings.Compare(la[i], lb[j]); c != 0 {
			return c
		}
	}
	return len(la) - len(lb)
}

// Error is a problem found in a zone file, with the line it was found on.
type Error struct {
	File string
	Line int // 0 when the problem is about the whole zone
	Msg  string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Errors is every problem found in one zone file.
type Errors []*Error

func (es Errors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "\n")
}

// maxErrors bounds how many problems one file reports: past that, the file is
// probably not a zone file at all.
const maxErrors = 20

// Load reads and validates the zone file at path for origin, with the
// dynamic names of bindings.
func Load(origin, path string, bindings ...Binding) (*Zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("zone %s: %w", origin, err)
	}
	defer f.Close()
	return Parse(origin, path, f, bindings...)
}

// lineReader counts the lines the zone parser has consumed. The parser reads
// byte by byte from an io.ByteReader, so when it hands back a record the count
// is the line the record ends on; miekg/dns does not report it otherwise.
type lineReader struct {
	r    io.ByteReader
	line int
}

func (l *lineReader) ReadByte() (byte, error) {
	b, err := l.r.ReadByte()
	if b == '\n' && err == nil {
		l.line++
	}
	return b, err
}

func (l *lineReader) Read(p []byte) (int, error) {
	// Only here to satisfy io.Reader; the parser uses ReadByte.
	if len(p) == 0 {
		return 0, nil
	}
	b, err := l.ReadByte()
	if err != nil {
		return 0, err
	}
	p[0] = b
	return 1, nil
}

// Parse reads a zone in master file format from r, with the dynamic names of
// bindings. name is used in messages. $INCLUDE is refused: a zone is one
// file, so a reload reads exactly what the operator named and nothing else.
func Parse(origin, name string, r io.Reader, bindings ...Binding) (*Zone, error) {
	origin, ok := CanonicalName(origin)
	if !ok {
		return nil, fmt.Errorf("zone %q: not a domain name", origin)
	}
	br, ok := r.(io.ByteReader)
	if !ok {
		br = bufio.NewReader(r)
	}
	lr := &lineReader{r: br, line: 1}
	zp := dns.NewZoneParser(lr, origin, name)
	zp.SetIncludeAllowed(false)
	// Without $TTL or an explicit TTL, records get an hour, as Knot DNS gives them.
	zp.SetDefaultTTL(3600)

	b := newBuilder(origin, name)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		// The parser has read the newline that ends the record.
		b.add(rr, lr.line-1)
		if len(b.errs) >= maxErrors {
			break
		}
	}
	if err := zp.Err(); err != nil {
		// What follows a syntax error was not read: checking the zone as a
		// whole would only add noise.
		line, msg := parseMessage(err)
		return nil, append(b.errs, &Error{File: name, Line: line, Msg: msg})
	}
	return b.finish(bindings)
}

var parseErrorLine = regexp.MustCompile(` at line: (\d+):\d+$`)

// parseMessage splits a miekg/dns parse error into its line and message, so
// that it reads like every other problem ("file:line: message").
func parseMessage(err error) (int, string) {
	msg := err.Error()
	var pe *dns.ParseError
	if !errors.As(err, &pe) {
		return 0, msg
	}
	if i := strings.Index(msg, "dns: "); i >= 0 {
		msg = msg[i+len("dns: "):]
	}
	m := parseErrorLine.FindStringSubmatchIndex(msg)
	if m == nil {
		return 0, msg
	}
	line, _ := strconv.Atoi(msg[m[2]:m[3]])
	return line, msg[:m[0]]
}

// Walk calls fn for every owner name of the zone (empty non-terminals
// included), spelled as CanonicalName spells it, with the types it holds, in
// no particular order. types is only valid during the call.
func (z *Zone) Walk(fn func(name string, types []uint16)) {
	var types []uint16
	for name, n := range z.nodes {
		types = types[:0]
		for _, set := range n.rrsets {
			types = append(types, set.typ)
		}
		fn(name, types)
	}
}
