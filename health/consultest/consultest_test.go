package consultest_test

import (
	"testing"

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
