package health_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health"
	"github.com/hashicorp/consul/api"
)

// lagConsul plays a Consul cluster for /v1/health/service/web: stale reads
// get the scripted answers of whichever server the agent happens to ask
// (the last one repeats), consistent reads get the leader's answer. The
// read right after a wait (a filtered query) that saw a new index gets the
// answer of the server that the wait saw.
type lagConsul struct {
	mu         sync.Mutex
	stale      []reply
	leader     reply
	staleN     int
	consistent int
	seen       reply
	followUp   bool
}

func (c *lagConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Consul-LastContact", "0")
	w.Header().Set("X-Consul-KnownLeader", "true")
	if !strings.HasPrefix(r.URL.Path, "/v1/health/service/web") {
		w.Header().Set("X-Consul-Index", "1")
		w.WriteHeader(http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	waitOnly := q.Get("filter") != ""
	c.mu.Lock()
	var rep reply
	if _, ok := q["stale"]; ok {
		rep = c.seen
		if waitOnly || !c.followUp {
			rep = c.stale[0]
			if len(c.stale) > 1 {
				c.stale = c.stale[1:]
			}
		}
		c.staleN++
	} else {
		rep = c.leader
		c.consistent++
	}
	c.followUp = waitOnly && rep.index != q.Get("index")
	c.seen = rep
	c.mu.Unlock()
	if waitOnly {
		rep.body = "[]"
	}
	if rep.index == "100" && r.URL.Query().Get("index") == "100" {
		// Nothing new: hold the blocking query a while, as Consul does.
		time.Sleep(50 * time.Millisecond)
	}
	w.Header().Set("X-Consul-Index", rep.index)
	_, _ = w.Write([]byte(rep.body))
}

func (c *lagConsul) counts() (stale, consistent int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.staleN, c.consistent
}

// A Consul server rebuilt from an empty data dir serves stale reads as soon
// as it has heard from the leader, which can be before it has restored the
// leader's snapshot: it answers an empty service at index 1 with a known
// leader (TestCluster in health/consultest logs it). An answer older than
// the data held must not empty the pool on that server's word: the leader
// decides. When the leader confirms it (a restore to an older state), it is
// taken.
func TestLoopLaggingServer(t *testing.T) {
	t.Parallel()
	c := &lagConsul{
		stale: []reply{
			{index: "100", body: oneInstance},
			{index: "1", body: "[]"},          // the rebuilt server, behind
			{index: "100", body: oneInstance}, // caught up, repeated
		},
		leader: reply{index: "100", body: oneInstance},
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	client, err := api.NewClient(&api.Config{Address: strings.TrimPrefix(srv.URL, "http://")})
	if err != nil {
		t.Fatal(err)
	}
	w := startWatcher(t, client, health.WatcherConfig{Services: []health.ServiceConfig{{Name: "web"}}, MinInterval: 10 * time.Millisecond})
	s := waitSnapshot(t, w, "instance present", targetIs("web", "web-1", func(*health.Target) bool { return true }))
	deadline := time.Now().Add(waitTimeout)
	for n, _ := c.counts(); n < 4; n, _ = c.counts() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d stale reads", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if g := w.Snapshot().Generation(); g != s.Generation() {
		t.Fatalf("an empty answer from a server behind the data held changed the snapshot (generation %d -> %d):\n%s", s.Generation(), g, dump(w.Snapshot()))
	}
	if _, n := c.counts(); n == 0 {
		t.Error("the answer going backwards was not checked with the leader")
	}

	// The leader agrees the service is gone (a snapshot restore, say): taken.
	c.mu.Lock()
	c.stale = []reply{{index: "5", body: "[]"}}
	c.leader = reply{index: "5", body: "[]"}
	c.mu.Unlock()
	waitSnapshot(t, w, "an older state the leader confirms is taken", func(s *health.Snapshot) bool {
		return len(s.Pool("web").Targets()) == 0
	})
}
