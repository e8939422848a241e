package consultest_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/farmdns/farmdns/health/consultest"
	"github.com/hashicorp/consul/api"
)

func TestAgentLifecycle(t *testing.T) {
	a := consultest.Start(t)
	in := consultest.Instance{Node: "n1", NodeAddress: "127.0.0.11", Service: "web", ID: "web-1", Port: 80}
	a.Register(t, in)
	a.PutKV(t, "k", []byte("v"))
	entries, _, err := a.Client.Health().Service("web", "", false, nil)
	if err != nil || len(entries) != 1 || entries[0].Node.Address != "127.0.0.11" {
		t.Fatalf("health/service after register: %v entries, err %v", len(entries), err)
	}
	addr := a.Addr
	a.Stop()
	if _, _, err := a.Client.Health().Service("web", "", false, nil); err == nil {
		t.Fatal("a stopped agent still answers")
	}
	a.Restart()
	if a.Addr != addr {
		t.Fatalf("restart moved the agent from %s to %s", addr, a.Addr)
	}
	entries, _, err = a.Client.Health().Service("web", "", false, nil)
	if err != nil || len(entries) != 0 {
		t.Fatalf("dev agent kept state across restart: %d entries, err %v", len(entries), err)
	}
}

func TestAgentACL(t *testing.T) {
	a := consultest.Start(t, consultest.WithACL())
	if a.Token == "" {
		t.Fatal("no management token")
	}
	anon, err := api.NewClient(&api.Config{Address: a.Addr})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := anon.KV().Put(&api.KVPair{Key: "k", Value: []byte("v")}, nil); err == nil {
		t.Fatal("default-deny agent accepted an anonymous write")
	}
	a.PutKV(t, "k", []byte("v")) // with the management token
}

// TestCluster: three servers elect a leader; killing it elects another, and
// a server rebuilt from an empty data dir rejoins, catches up and votes.
func TestCluster(t *testing.T) {
	start := time.Now()
	c := consultest.StartCluster(t)
	t.Logf("cluster up in %v", time.Since(start).Round(time.Millisecond))
	c.WaitHealthy(t)
	// A Raft log of a few hundred entries, so that a rebuilt server has
	// several batches to catch up on.
	for i := range 300 {
		c.Agent.PutKV(t, fmt.Sprintf("k/%d", i), []byte("v"))
	}
	c.Agent.Register(t, consultest.Instance{Node: "n1", NodeAddress: "127.0.0.11", Service: "web", ID: "web-1", Port: 80})

	old := c.WaitLeader(t, nil)
	old.Kill()
	killed := time.Now()
	next := c.WaitLeader(t, old)
	t.Logf("new leader %s %v after killing %s", next.NodeName, time.Since(killed).Round(time.Millisecond), old.NodeName)
	// Writes go through the new leader. The client agent may first try the
	// dead server and fail, until gossip marks it failed: retry, as a real
	// writer must.
	for deadline := time.Now().Add(10 * time.Second); ; {
		err := c.Agent.PutKVErr("after-election", []byte("v"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write after the election: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	old.Wipe()
	rebuilt := time.Now()
	// While it rejoins, stale reads of it may see an empty catalog: Consul
	// serves them locally once the server has heard from the leader, which
	// can be before the snapshot is restored (seen: 0 entries at index 1,
	// known leader true). Logged, not asserted, as it depends on timing;
	// the watcher's TestLoopLaggingServer pins what farmdns does about it.
	stop := make(chan struct{})
	probed := make(chan string, 1)
	go func() {
		reads, partial, first := 0, 0, ""
		for {
			select {
			case <-stop:
				probed <- fmt.Sprintf("%d reads, %d with a partial catalog%s", reads, partial, first)
				return
			default:
			}
			entries, meta, err := old.Client.Health().Service("web", "", false, &api.QueryOptions{AllowStale: true})
			if err == nil {
				reads++
				if len(entries) != 1 {
					partial++
					if first == "" {
						first = fmt.Sprintf(" (first: %d entries, index %d, known leader %v)", len(entries), meta.LastIndex, meta.KnownLeader)
					}
				}
			}
			time.Sleep(2 * time.Millisecond)
		}
	}()
	old.Restart()
	t.Logf("rebuilt server answers after %v", time.Since(rebuilt).Round(time.Millisecond))
	c.WaitHealthy(t)
	t.Logf("rebuilt server votes after %v", time.Since(rebuilt).Round(time.Millisecond))
	close(stop)
	p := <-probed
	t.Logf("stale reads of the rebuilt server while it rejoined: %s", p)
	// The rebuilt server holds the state from before and after its loss,
	// read from its own store (stale: not forwarded to the leader).
	stale := &api.QueryOptions{AllowStale: true}
	entries, _, err := old.Client.Health().Service("web", "", false, stale)
	if err != nil || len(entries) != 1 {
		t.Fatalf("rebuilt server: web has %d entries, err %v", len(entries), err)
	}
	if kv, _, err := old.Client.KV().Get("after-election", stale); err != nil || kv == nil {
		t.Fatalf("rebuilt server lacks the write made while it was down: %v %v", kv, err)
	}
	t.Logf("whole test %v", time.Since(start).Round(time.Millisecond))
}
