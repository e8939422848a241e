package health

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The state file keeps the last good catalog and load reports on disk so that
// a farmdns restarted while Consul is unreachable starts with full pools
// instead of empty ones. Its first line is a header,
//
//	farmdns-state 1 <body length> <sha256 of the body, hex>
//
// and the rest is a JSON body. The length and hash catch a torn or corrupt
// write; the body names the datacenter and load prefix it was read from, so a
// file copied from another farm is not trusted.

const (
	stateMagic   = "farmdns-state"
	stateVersion = 1
	// MaxStateFileSize bounds the state file, written and read: a catalog
	// of 50,000 instances takes about 15 MB.
	MaxStateFileSize = 128 << 20
	// stateSaveInterval is the least time between two writes: the file is a
	// start-up fallback, a few seconds behind is as good as current.
	stateSaveInterval = 10 * time.Second
)

// stateBody is the JSON body of the state file.
type stateBody struct {
	Datacenter string                     `json:"datacenter"`
	LoadPrefix string                     `json:"load_prefix"`
	Saved      time.Time                  `json:"saved"`
	Services   map[string][]stateInstance `json:"services"`
	KV         []stateKV                  `json:"kv"`
}

type stateInstance struct {
	Node     string            `json:"node"`
	NodeAddr string            `json:"node_addr"`
	ID       string            `json:"id"`
	Addr     string            `json:"addr"`
	Port     int               `json:"port"`
	Tags     []string          `json:"tags,omitempty"`
	Meta     map[string]string `json:"meta,omitempty"`
	Health   HealthState       `json:"health"`
	Draining bool              `json:"draining,omitempty"`
}

type stateKV struct {
	Key   string `json:"key"`
	Value []byte `json:"value"`
}

// savedState is what the watcher restores: the builder's inputs as they were
// when the file was written.
type savedState struct {
	saved     time.Time
	instances map[string][]instance
	kv        []kvPair
}

// encodeState renders the builder's inputs as a state file.
func encodeState(dc, prefix string, saved time.Time, instances map[string][]instance, kv []kvPair) ([]byte, error) {
	body := stateBody{Datacenter: dc, LoadPrefix: prefix, Saved: saved.UTC(), Services: make(map[string][]stateInstance, len(instances))}
	for svc, ins := range instances {
		out := make([]stateInstance, len(ins))
		for i, in := range ins {
			out[i] = stateInstance{Node: in.node, NodeAddr: in.nodeAddr, ID: in.id, Addr: in.addr, Port: in.port,
				Tags: in.tags, Meta: in.meta, Health: in.health, Draining: in.draining}
		}
		body.Services[svc] = out
	}
	body.KV = make([]stateKV, len(kv))
	for i, p := range kv {
		body.KV[i] = stateKV{Key: p.key, Value: p.value}
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(b)
	head := fmt.Sprintf("%s %d %d %s\n", stateMagic, stateVersion, len(b), hex.EncodeToString(sum[:]))
	if len(head)+len(b) > MaxStateFileSize {
		return nil, fmt.Errorf("state is %d bytes, more than the %d allowed", len(head)+len(b), MaxStateFileSize)
	}
	return append([]byte(head), b...), nil
}

// decodeState parses a state file and checks that it belongs to this farm:
// same datacenter and load prefix. Only the services in want are kept.
func decodeState(r io.Reader, dc, prefix string, want []ServiceConfig) (*savedState, error) {
	br := bufio.NewReader(io.LimitReader(r, MaxStateFileSize+1))
	head, err := br.ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("no header line: %w", err)
	}
	f := strings.Fields(head)
	if len(f) != 4 || f[0] != stateMagic {
		return nil, errors.New("not a farmdns state file")
	}
	if f[1] != strconv.Itoa(stateVersion) {
		return nil, fmt.Errorf("format version %s, this farmdns reads %d", f[1], stateVersion)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil || n < 0 || n > MaxStateFileSize {
		return nil, fmt.Errorf("bad body length %q", f[2])
	}
	b, err := io.ReadAll(br)
	if err != nil {
		return nil, err
	}
	if len(b) != n {
		return nil, fmt.Errorf("body is %d bytes, header says %d (torn write?)", len(b), n)
	}
	sum := sha256.Sum256(b)
	if hex.EncodeToString(sum[:]) != f[3] {
		return nil, errors.New("checksum mismatch: the file is corrupt")
	}
	var body stateBody
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	if body.Datacenter != dc || body.LoadPrefix != prefix {
		return nil, fmt.Errorf("written for datacenter %q and load prefix %q, not %q and %q: another farm's file",
			body.Datacenter, body.LoadPrefix, dc, prefix)
	}
	st := &savedState{saved: body.Saved, instances: map[string][]instance{}}
	for _, sc := range want {
		saved, ok := body.Services[sc.Name]
		if !ok {
			continue
		}
		ins := make([]instance, len(saved))
		for i, s := range saved {
			if s.Health > HealthCritical {
				return nil, fmt.Errorf("service %s: health %d out of range", sc.Name, s.Health)
			}
			ins[i] = instance{node: s.Node, nodeAddr: s.NodeAddr, id: s.ID, addr: s.Addr, port: s.Port,
				tags: s.Tags, meta: s.Meta, health: s.Health, draining: s.Draining,
				loadKey: LoadKey(prefix, sc.Name, s.Node, s.ID)}
		}
		st.instances[sc.Name] = ins
	}
	st.kv = make([]kvPair, 0, len(body.KV))
	for _, p := range body.KV {
		st.kv = append(st.kv, kvPair{key: p.Key, value: p.Value})
	}
	return st, nil
}

// loadStateFile reads the state file at path. A missing file is not an
// error: it returns nil, nil.
func loadStateFile(path, dc, prefix string, want []ServiceConfig) (*savedState, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > MaxStateFileSize {
		return nil, fmt.Errorf("%d bytes, more than the %d allowed", fi.Size(), MaxStateFileSize)
	}
	return decodeState(f, dc, prefix, want)
}

// writeFileAtomic replaces path with b so that a reader, or a farmdns
// restarted after a crash, sees either the old file or the new one whole.
func writeFileAtomic(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after a successful rename this fails harmlessly
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	// Make the rename itself durable.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}
