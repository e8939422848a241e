package health_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/hashicorp/consul/api"
)

// The real Consul cannot be made to misbehave on demand; these tests put a
// scripted HTTP server in its place to pin the blocking-query rules and the
// answers the watcher must refuse.

// reply is one scripted answer.
type reply struct {
	status      int // 0 means 200
	index       string
	knownLeader bool
	body        string
}

// scriptedConsul answers /v1/health/service/web from a script (repeating the
// last entry) and the KV prefix with an empty 404, recording the index each
// health request waited on. Each request takes the next entry, except the
// read the watcher makes right after a wait that saw a new index (see
// waitForChange): that one gets the entry the wait saw, and is not recorded.
type scriptedConsul struct {
	mu       sync.Mutex
	script   []reply
	waited   []string
	seen     reply // the entry the last wait (a filtered query) answered
	followUp bool  // the next unfiltered read gets seen
	reads    int   // unfiltered reads: the instances sent
}

func (s *scriptedConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/v1/health/service/web") {
		w.Header().Set("X-Consul-Index", "1")
		w.Header().Set("X-Consul-LastContact", "0")
		w.Header().Set("X-Consul-KnownLeader", "true")
		w.WriteHeader(http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	waitOnly := q.Get("filter") != ""
	s.mu.Lock()
	rep := s.seen
	if !waitOnly {
		s.reads++
	}
	if waitOnly || !s.followUp {
		s.waited = append(s.waited, q.Get("index"))
		rep = s.script[0]
		if len(s.script) > 1 {
			s.script = s.script[1:]
		}
	}
	s.followUp = waitOnly && rep.status == 0 && rep.index != q.Get("index")
	s.seen = rep
	s.mu.Unlock()
	if waitOnly && rep.status == 0 {
		rep.body = "[]"
	}
	w.Header().Set("X-Consul-Index", rep.index)
	w.Header().Set("X-Consul-LastContact", "0") // the API client stops parsing headers without it
	if rep.knownLeader {
		w.Header().Set("X-Consul-KnownLeader", "true")
	} else {
		w.Header().Set("X-Consul-KnownLeader", "false")
	}
	if rep.status != 0 {
		w.WriteHeader(rep.status)
	}
	_, _ = w.Write([]byte(rep.body))
}

func (s *scriptedConsul) set(script ...reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.script = script
}

func (s *scriptedConsul) waits() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.waited...)
}

func startScripted(t *testing.T, minInterval time.Duration, script ...reply) (*scriptedConsul, *health.Watcher) {
	t.Helper()
	sc := &scriptedConsul{script: script}
	srv := httptest.NewServer(sc)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, client, health.WatcherConfig{
		Services:    []health.ServiceConfig{{Name: "web"}},
		MinInterval: minInterval,
	})
	return sc, w
}

const oneInstance = `[{"Node":{"Node":"n1","Address":"10.0.0.1"},"Service":{"ID":"web-1","Service":"web","Port":80},"Checks":[]}]`

func waitRequests(t *testing.T, sc *scriptedConsul, n int) []string {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for len(sc.waits()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("only %d requests after %v, want %d", len(sc.waits()), waitTimeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return sc.waits()[:n]
}

func TestLoopIndexRules(t *testing.T) {
	t.Parallel()
	sc, _ := startScripted(t, 10*time.Millisecond,
		reply{index: "100", knownLeader: true, body: "[]"},
		reply{index: "100", knownLeader: true, body: "[]"}, // wait timed out: same index
		reply{index: "50", knownLeader: true, body: "[]"},  // backwards
		reply{index: "60", knownLeader: true, body: "[]"},
		reply{index: "0", knownLeader: true, body: "[]"}, // backwards to 0
		reply{index: "0", knownLeader: true, body: "[]"}, // and 0 again
		reply{index: "7", knownLeader: true, body: "[]"},
	)
	got := strings.Join(waitRequests(t, sc, 8), ",")
	// "" is a non-blocking read: the first one, and the one after an index
	// went backwards; 0 is never waited on twice in a row.
	if want := ",100,100,,60,,1,7"; got != want {
		t.Errorf("waited on indexes %q, want %q", got, want)
	}
}

func TestLoopRateLimit(t *testing.T) {
	t.Parallel()
	// A Consul that answers at once with a new index every time.
	sc := &scriptedConsul{}
	for i := 1; i < 1000; i++ {
		sc.script = append(sc.script, reply{index: strconv.Itoa(i), knownLeader: true, body: "[]"})
	}
	srv := httptest.NewServer(sc)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	startWatcher(t, client, health.WatcherConfig{Services: []health.ServiceConfig{{Name: "web"}}}) // default 100 ms
	waitRequests(t, sc, 2)
	start := time.Now()
	n0 := len(sc.waits())
	time.Sleep(time.Second) // a measurement window, not a synchronisation
	rate := float64(len(sc.waits())-n0) / time.Since(start).Seconds()
	if rate > 11 {
		t.Errorf("%.1f queries/s against a Consul that always has news; the limit is 10/s", rate)
	}
}

func TestLoopBackoff(t *testing.T) {
	t.Parallel()
	sc, w := startScripted(t, time.Millisecond, reply{status: 500, index: "1", body: "rpc error: No cluster leader"})
	waitStatus(t, w, "failing", func(st *health.Status) bool { return st.DataSets[1].Failing })
	time.Sleep(1500 * time.Millisecond) // a measurement window, not a synchronisation
	n := len(sc.waits())
	// Backoff 100-200 ms, 200-400, 400-800, ...: at most 5 tries in 1.5 s.
	if n > 6 {
		t.Errorf("%d requests in 1.5 s to a failing Consul: no backoff", n)
	}
	st := w.Status().DataSets[1]
	if st.Errors < 2 || !strings.Contains(st.LastError.Error(), "No cluster leader") {
		t.Errorf("errors %d, last %v", st.Errors, st.LastError)
	}
}

func TestLoopRefusesBadAnswers(t *testing.T) {
	t.Parallel()
	sc, w := startScripted(t, 10*time.Millisecond,
		reply{index: "10", knownLeader: true, body: oneInstance},
		reply{index: "11", knownLeader: false, body: "[]"},               // no leader, no data
		reply{index: "12", knownLeader: true, body: `[{"Node": garbage`}, // not JSON
		reply{index: "13", knownLeader: true, body: oneInstance},         // repeated from here on
	)
	s := waitSnapshot(t, w, "instance present", targetIs("web", "web-1", func(*health.Target) bool { return true }))
	waitRequests(t, sc, 5)
	st := waitStatus(t, w, "two refused answers", func(st *health.Status) bool { return st.DataSets[1].Errors == 2 })
	if msg := st.DataSets[1].LastError.Error(); !strings.Contains(msg, "health: service web: consul query:") {
		t.Errorf("last error %q", msg)
	}
	if g := w.Snapshot().Generation(); g != s.Generation() {
		t.Fatalf("a refused answer changed the snapshot (generation %d -> %d):\n%s", s.Generation(), g, dump(w.Snapshot()))
	}
	sc.set(reply{index: "20", knownLeader: true, body: "[]"})
	waitSnapshot(t, w, "an empty answer with a leader empties the pool", func(s *health.Snapshot) bool {
		return len(s.Pool("web").Targets()) == 0
	})
}

// TestLoopWaitsWithoutReading: after the first read, the loop waits on a
// query that carries the index and no instances, and reads the instances
// again only when the index moves, not each time a wait times out.
func TestLoopWaitsWithoutReading(t *testing.T) {
	t.Parallel()
	sc, w := startScripted(t, 10*time.Millisecond,
		reply{index: "100", knownLeader: true, body: oneInstance},
		reply{index: "100", knownLeader: true, body: oneInstance}, // the wait timed out
		reply{index: "100", knownLeader: true, body: oneInstance}, // and again
		reply{index: "101", knownLeader: true, body: "[]"},        // the instance left; repeated
	)
	waitSnapshot(t, w, "the instance gone", func(s *health.Snapshot) bool { return len(s.Pool("web").Targets()) == 0 })
	if got := strings.Join(waitRequests(t, sc, 5), ","); got != ",100,100,100,101" {
		t.Errorf("waited on indexes %q, want %q", got, ",100,100,100,101")
	}
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.reads != 2 {
		t.Errorf("the instances were read %d times, want 2: the first read and the one after the index moved", sc.reads)
	}
}
