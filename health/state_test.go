package health

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testState(t *testing.T) []byte {
	t.Helper()
	ins := map[string][]instance{"web": {
		{node: "n1", nodeAddr: "192.0.2.1", id: "web-1", port: 80, tags: []string{"a"}, meta: map[string]string{"shard": "s1"}},
		{node: "n2", nodeAddr: "192.0.2.2", id: "web-2", port: 80, health: HealthCritical, draining: true},
	}}
	kv := []kvPair{{key: "farmdns/load/web/n1/web-1", value: []byte(`{"connections":5,"updated":"2026-01-01T00:00:00Z"}`)}}
	b, err := encodeState("dc1", "farmdns/load", time.Unix(1e9, 0), ins, kv)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestStateRoundTrip(t *testing.T) {
	b := testState(t)
	st, err := decodeState(bytes.NewReader(b), "dc1", "farmdns/load", []ServiceConfig{{Name: "web"}, {Name: "other"}})
	if err != nil {
		t.Fatal(err)
	}
	ins := st.instances["web"]
	if len(ins) != 2 || ins[0].node != "n1" || ins[0].meta["shard"] != "s1" || ins[1].health != HealthCritical || !ins[1].draining {
		t.Errorf("instances: %+v", ins)
	}
	if ins[0].loadKey != "farmdns/load/web/n1/web-1" {
		t.Errorf("load key %q", ins[0].loadKey)
	}
	if _, ok := st.instances["other"]; ok {
		t.Error("a service the file does not hold was restored")
	}
	if len(st.kv) != 1 || !st.saved.Equal(time.Unix(1e9, 0)) {
		t.Errorf("kv %v, saved %v", st.kv, st.saved)
	}
}

// Every kind of bad file is refused with a reason, never half-used.
func TestStateRejectsBadFiles(t *testing.T) {
	good := testState(t)
	flip := bytes.Clone(good)
	flip[len(flip)-10] ^= 1
	for _, c := range []struct {
		name, dc, want string
		b              []byte
	}{
		{"corrupt body", "dc1", "checksum", flip},
		{"torn write", "dc1", "torn", good[:len(good)-7]},
		{"other datacenter", "dc2", "another farm", good},
		{"newer format", "dc1", "format version", bytes.Replace(good, []byte("farmdns-state 1 "), []byte("farmdns-state 2 "), 1)},
		{"not a state file", "dc1", "not a farmdns state file", []byte("{\"services\":{}}\n")},
		{"empty", "dc1", "header", nil},
		{"bad length", "dc1", "length", bytes.Replace(good, []byte("farmdns-state 1 "), []byte("farmdns-state 1 -"), 1)},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeState(bytes.NewReader(c.b), c.dc, "farmdns/load", []ServiceConfig{{Name: "web"}})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %v, want one mentioning %q", err, c.want)
			}
		})
	}
}

func TestStateFileAtomicAndBounded(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	if st, err := loadStateFile(path, "dc1", "farmdns/load", nil); st != nil || err != nil {
		t.Fatalf("missing file: %v, %v; want nothing and no error", st, err)
	}
	if err := writeFileAtomic(path, testState(t)); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(path, testState(t)); err != nil { // replaces
		t.Fatal(err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Errorf("directory holds %d entries after two saves, want the file alone", len(ents))
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600 (it holds the catalog)", fi.Mode().Perm())
	}
	if _, err := loadStateFile(path, "dc1", "farmdns/load", []ServiceConfig{{Name: "web"}}); err != nil {
		t.Fatal(err)
	}
	// A file over the bound is refused before it is read.
	f, _ := os.Create(path)
	f.Truncate(MaxStateFileSize + 1)
	f.Close()
	if _, err := loadStateFile(path, "dc1", "farmdns/load", nil); err == nil || !strings.Contains(err.Error(), "allowed") {
		t.Errorf("oversized file: %v", err)
	}
}
