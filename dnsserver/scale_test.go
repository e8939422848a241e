//go:build linux

package dnsserver

import (
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/farmdns/farmdns/health"
	"github.com/miekg/dns"
)

// BenchmarkScale50k answers, from one handler with a pool of 50,000
// targets, a static name, the pool's A records, its SRV records and a
// target name, interleaved in batches, and reports each one's CPU time per
// query (the thread's own, so that time spent descheduled on a shared
// machine does not count) and its QPS on a core as a share of the static
// one (issue 12: pool A ≥ 0.8, SRV and target names ≥ 0.5):
//
//	go test -run XXX -bench BenchmarkScale50k -benchtime 2000x ./dnsserver/
func BenchmarkScale50k(b *testing.B) { benchScale(b, 50000, "node-25000") }

// BenchmarkScale30 is BenchmarkScale50k with a pool of 30 targets: what is
// left of a query's cost when the pool's size does not weigh on it.
func BenchmarkScale30(b *testing.B) { benchScale(b, 30, "node-00015") }

func benchScale(b *testing.B, n int, targetNode string) {
	const batch = 256
	ts := make([]health.Target, n)
	for i := range ts {
		ts[i] = target(fmt.Sprintf("node-%05d", i), fmt.Sprintf("10.%d.%d.1", i/256, i%256), int64(i%500), nil)
	}
	h := srvHandler(b, 3, ts)
	kinds := []struct {
		name, qname string
		qtype       uint16
	}{
		{"static", "ns1.farm.example.", dns.TypeA},
		{"a", "farm.example.", dns.TypeA},
		{"srv", "_ws._tcp.farm.example.", dns.TypeSRV},
		{"target", targetNode + ".nodes.farm.example.", dns.TypeA},
	}
	wires := make([][]byte, len(kinds))
	for i, k := range kinds {
		wires[i], _ = query(k.qname, k.qtype).Pack()
		var rec recorder
		h.serve(&rec, make([]byte, 65535), request{wire: wires[i]})
		if r := new(dns.Msg); r.Unpack(rec.msgs[0]) != nil || len(r.Answer) == 0 {
			b.Fatalf("%s: no answer: %v", k.name, r)
		}
	}
	// Askers from 2^24 /24s in turn: none comes back within the sticky
	// window (500 ms), so each pool query is a fresh choice.
	asker := func(c int) netip.Addr { return netip.AddrFrom4([4]byte{byte(c >> 16), byte(c >> 8), byte(c), 1}) }
	buf := make([]byte, 65535)
	spent := make([]time.Duration, len(kinds))
	c := 0
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for b.Loop() {
		for k, wire := range wires {
			start := threadCPU(b)
			for range batch {
				h.serve(discard{}, buf, request{wire: wire, remote: asker(c)})
				c++
			}
			spent[k] += threadCPU(b) - start
		}
	}
	for k := range kinds {
		per := spent[k] / time.Duration(b.N*batch)
		b.ReportMetric(float64(per.Nanoseconds()), kinds[k].name+"-ns/query")
		if k > 0 {
			b.ReportMetric(float64(spent[0])/float64(spent[k]), kinds[k].name+"/static-qps")
		}
	}
}

// threadCPU returns the CPU time of the calling OS thread.
func threadCPU(b *testing.B) time.Duration {
	const clockThreadCPUTimeID = 3 // CLOCK_THREAD_CPUTIME_ID
	var ts syscall.Timespec
	if _, _, e := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockThreadCPUTimeID, uintptr(unsafe.Pointer(&ts)), 0); e != 0 {
		b.Fatal(e)
	}
	return time.Duration(ts.Nano())
}

// BenchmarkPoolsStatus50k is one PoolsStatus of a pool of 50,000 targets,
// as farmdns's status sampler takes every 5 s whether or not anyone looks.
//
//	go test -run XXX -bench BenchmarkPoolsStatus50k ./dnsserver/
func BenchmarkPoolsStatus50k(b *testing.B) {
	ts := make([]health.Target, 50000)
	for i := range ts {
		ts[i] = target(fmt.Sprintf("node-%05d", i), fmt.Sprintf("10.%d.%d.1", i/256, i%256), int64(i%500), nil)
	}
	h := srvHandler(b, 3, ts)
	b.ReportAllocs()
	for b.Loop() {
		if ps := h.PoolsStatus(time.Now()); len(ps) == 0 || len(ps[0].Targets) != len(ts) {
			b.Fatalf("%d pools", len(ps))
		}
	}
}
