package conncount

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health/consultest"
)

// BenchmarkCount measures one count with 10,000 and 100,000 established
// connections to the counted port (plus as many client ends on other local
// ports, which must be skipped). Run it with
//
//	go test -run '^$' -bench Count -benchtime 20x ./cmd/farmdns-agent/conncount
//
// Each connection costs two descriptors (client and server end). The
// benchmark raises RLIMIT_NOFILE with setrlimit; when the hard limit is too
// low for all sockets to live in this process, they are spread over helper
// processes (this test binary re-executed), each under the limit. Where does a
// socket live makes no difference to the kernel walk being measured. The
// sockets are split over loopback addresses 127.0.0.10 and up, one listener
// per address on the same port, to stay within the ephemeral port range.
func BenchmarkCount(b *testing.B) {
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) {
			port := openConns(b, n)
			for _, v := range variants {
				b.Run(v.name, func(b *testing.B) {
					c := v.make(b, port)
					if r := count(b, c); r.Established != int64(n) {
						b.Fatalf("counted %d, want %d", r.Established, n)
					}
					b.ReportAllocs()
					b.ResetTimer()
					for b.Loop() {
						if _, err := c.Count(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		})
	}
}

const (
	// maxPerAddr stays below the default ephemeral port range (32768-60999):
	// all clients of one listener address share the 127.0.0.1 source.
	maxPerAddr = 25_000
	// fdSlack covers the descriptors a Go test process uses besides sockets.
	fdSlack = 200
	// helperEnv makes TestMain hold connections instead of running tests:
	// its value is "ADDR N".
	helperEnv = "CONNCOUNT_BENCH_HOLD"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(helperMain(spec))
	}
	os.Exit(m.Run())
}

// openConns opens n connections to one port and returns that port.
func openConns(b *testing.B, n int) uint16 {
	b.Helper()
	hard := raiseNofile(2*n + fdSlack)
	inProcess := hard >= uint64(2*n+fdSlack)
	chunk := maxPerAddr
	if !inProcess {
		chunk = min(chunk, (int(hard)-fdSlack)/2)
		if chunk < 1000 || n/chunk > 200 {
			consultest.Skipf(b, "RLIMIT_NOFILE hard limit %d is too low to hold %d connections even over helper processes", hard, n)
		}
		b.Logf("RLIMIT_NOFILE hard limit is %d and cannot be raised (needs CAP_SYS_RESOURCE): holding the sockets in %d helper processes",
			hard, (n+chunk-1)/chunk)
	}
	port := uint16(consultest.FreePort(b))
	for k := 0; n > 0; k++ {
		m := min(n, chunk)
		n -= m
		addr := net.JoinHostPort(fmt.Sprintf("127.0.0.%d", 10+k), strconv.Itoa(int(port)))
		if inProcess {
			release, err := holdConns(addr, m)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(release)
		} else {
			startHelper(b, addr, m)
		}
	}
	return port
}

// raiseNofile lifts the soft RLIMIT_NOFILE to want, or as far as the hard
// limit allows, and returns the limit now in force.
func raiseNofile(want int) uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	w := uint64(want)
	if lim.Cur >= w {
		return lim.Cur
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: w, Max: max(lim.Max, w)}) == nil {
		return w
	}
	if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: lim.Max, Max: lim.Max}) == nil {
		return lim.Max
	}
	return lim.Cur
}

// holdConns listens on addr, opens n connections to it and keeps both ends
// until release is called.
func holdConns(addr string, n int) (release func(), err error) {
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		return nil, err
	}
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, 2*n)
		wg    sync.WaitGroup
	)
	release = func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			// RST instead of FIN: no TIME_WAIT left to eat ports of later runs.
			c.(*net.TCPConn).SetLinger(0)
			c.Close()
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	const workers = 8
	errs := make(chan error, workers)
	var dial sync.WaitGroup
	for w := range workers {
		dial.Add(1)
		go func() {
			defer dial.Done()
			for i := w; i < n; i += workers {
				c, err := net.Dial("tcp4", addr)
				if err != nil {
					errs <- fmt.Errorf("dial %s (#%d): %w", addr, i, err)
					return
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	dial.Wait()
	close(errs)
	if err := <-errs; err != nil {
		release()
		return nil, err
	}
	// Every dial returned, so every connection is established on both sides
	// (a server end may still wait in the accept queue; it is counted too).
	return release, nil
}

// startHelper runs this test binary as a process holding n connections to
// addr, and stops it at cleanup.
func startHelper(b *testing.B, addr string, n int) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d", helperEnv, addr, n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		consultest.Skipf(b, "cannot start a helper process: %v", err)
	}
	b.Cleanup(func() {
		stdin.Close() // the helper exits on EOF
		cmd.Wait()
		cancel()
	})
	ready := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		ready <- strings.TrimSpace(line)
		io.Copy(io.Discard, stdout)
	}()
	select {
	case line := <-ready:
		if line != "ready" {
			b.Fatalf("helper for %s: %q", addr, line)
		}
	case <-time.After(2 * time.Minute):
		b.Fatalf("helper for %s: not ready after 2m", addr)
	}
}

func helperMain(spec string) int {
	addr, ns, _ := strings.Cut(spec, " ")
	n, err := strconv.Atoi(ns)
	if err != nil {
		fmt.Printf("bad spec %q\n", spec)
		return 2
	}
	raiseNofile(2*n + fdSlack)
	release, err := holdConns(addr, n)
	if err != nil {
		fmt.Printf("error: %v\n", err)
		return 1
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	release()
	return 0
}
