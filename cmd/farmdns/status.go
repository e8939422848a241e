package main

import (
	"embed"
	"encoding/json"
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/health"
)

//go:embed status.html
var statusFiles embed.FS

var statusPage = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"pct": func(a, b int64) float64 {
		if b <= 0 {
			return 0
		}
		return min(100, 100*float64(a)/float64(b))
	},
	"mul100": func(f float64) float64 { return 100 * f },
	"ago": func(t any) string {
		var at time.Time
		switch t := t.(type) {
		case time.Time:
			at = t
		case *time.Time:
			if t != nil {
				at = *t
			}
		}
		if at.IsZero() {
			return "never"
		}
		return time.Since(at).Round(time.Second).String() + " ago"
	},
	"until": func(t *time.Time) string {
		if t == nil {
			return "-"
		}
		if d := time.Until(*t); d > 0 {
			return "in " + d.Round(time.Second).String()
		}
		return "passed"
	},
	"balanceChart": balanceChart,
	"targetsChart": targetsChart,
}).ParseFS(statusFiles, "status.html"))

// status is what /status shows and /status.json returns.
type status struct {
	Now      time.Time     `json:"now"`
	Instance string        `json:"instance"`
	Zones    []zoneStatus  `json:"zones"`
	Pools    []poolStatus  `json:"pools"`
	Consul   *consulStatus `json:"consul,omitempty"`
	// ConsulDNS is the consul_dns side: its catalog and asked services.
	ConsulDNS *consulDNSStatus `json:"consul_dns,omitempty"`
	Reload    reloadStatus     `json:"reload"`
}

type zoneStatus struct {
	Origin  string `json:"origin"`
	File    string `json:"file"`
	Records int    `json:"records"`
	Serial  uint32 `json:"serial"`
}

type poolStatus struct {
	dnsserver.PoolStatus
	Targets []targetStatus `json:"targets"`
	// History is the pool's balance over the last 15 minutes; nil before
	// the first sample.
	History *poolGraph `json:"history,omitempty"`
}

// targetStatus adds the target's share of the pool's recent answers.
type targetStatus struct {
	dnsserver.TargetStatus
	RecentShare float64 `json:"recent_answer_share"`
}

type consulStatus struct {
	Ready bool   `json:"ready"`
	Why   string `json:"why,omitempty"`
	// ServingSaved is set while pools come from the state file of an
	// earlier run (saved at Restored) because Consul has not answered yet.
	ServingSaved   bool            `json:"serving_saved_state"`
	Restored       time.Time       `json:"restored_state_saved,omitzero"`
	StateFile      string          `json:"state_file,omitempty"`
	StateSaved     time.Time       `json:"state_file_last_save,omitzero"`
	StateSaveError string          `json:"state_file_error,omitempty"`
	DataSets       []dataSetStatus `json:"data_sets"`
}

// dataSetStatus is health.DataSetStatus with its error as text.
type dataSetStatus struct {
	Kind        string    `json:"kind"`
	Name        string    `json:"name"`
	Index       uint64    `json:"index"`
	LastSuccess time.Time `json:"last_success"`
	LastError   string    `json:"last_error,omitempty"`
	Failing     bool      `json:"failing"`
	Errors      uint64    `json:"errors"`
}

// dataSets returns ws's data sets for the status page.
func dataSets(ws *health.Status) []dataSetStatus {
	var out []dataSetStatus
	for _, d := range ws.DataSets {
		ds := dataSetStatus{Kind: string(d.Kind), Name: d.Name, Index: d.Index, LastSuccess: d.LastSuccess, Failing: d.Failing, Errors: d.Errors}
		if d.LastError != nil {
			ds.LastError = d.LastError.Error()
		}
		out = append(out, ds)
	}
	return out
}

type reloadStatus struct {
	OK   bool      `json:"ok"`
	At   time.Time `json:"at"`
	Last string    `json:"last_error,omitempty"`
}

// recentAnswers remembers answer counts a while back, so that the status page
// can show each target's share of the answers of the last minute or two,
// not since the process started.
type recentAnswers struct {
	mu         sync.Mutex
	at         time.Time
	base, prev map[string]uint64 // by pool and target
}

// window is how far back "recent" reaches: between one and two of these.
const window = time.Minute

func (r *recentAnswers) shares(pools []dnsserver.PoolStatus, now time.Time) []poolStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	counts := map[string]uint64{}
	for _, p := range pools {
		for _, t := range p.Targets {
			counts[p.Name+" "+t.Node+"/"+t.ServiceID] = t.Answers
		}
	}
	if r.base == nil || now.Sub(r.at) > window {
		r.base, r.prev, r.at = r.prev, counts, now
		if r.base == nil {
			r.base = map[string]uint64{}
		}
	}
	out := make([]poolStatus, len(pools))
	for i, p := range pools {
		var total float64
		for _, t := range p.Targets {
			total += float64(t.Answers - r.base[p.Name+" "+t.Node+"/"+t.ServiceID])
		}
		out[i].PoolStatus = p
		for _, t := range p.Targets {
			ts := targetStatus{TargetStatus: t}
			if total > 0 {
				ts.RecentShare = float64(t.Answers-r.base[p.Name+" "+t.Node+"/"+t.ServiceID]) / total
			}
			out[i].Targets = append(out[i].Targets, ts)
		}
	}
	return out
}

func (s *server) status() status {
	now := time.Now()
	st := status{Now: now, Instance: *s.cfg.Load().DNS.NSID}
	for _, z := range s.handler.State().Zones.Zones() {
		st.Zones = append(st.Zones, zoneStatus{Origin: z.Origin, File: z.File, Records: z.Records(), Serial: z.SOA().Serial})
	}
	pools := s.handler.PoolsStatus(now)
	var consulPools []dnsserver.PoolStatus
	st.ConsulDNS, consulPools = s.consulDNSStatus(now)
	// One call: shares keeps one window for all the pools it is given.
	st.Pools = s.recent.shares(append(pools, consulPools...), now)
	if st.ConsulDNS != nil {
		st.ConsulDNS.Pools = st.Pools[len(pools):]
	}
	st.Pools = st.Pools[:len(pools):len(pools)]
	if w := s.currentWatcher(); w != nil {
		ws := w.Status()
		ready, why := ws.Ready(now)
		st.Consul = &consulStatus{Ready: ready, Why: why, ServingSaved: ws.ServingSaved(), Restored: ws.Restored}
		if sf := w.StateFile(); sf.Path != "" {
			st.Consul.StateFile, st.Consul.StateSaved = sf.Path, sf.LastSave
			if sf.LastError != nil {
				st.Consul.StateSaveError = sf.LastError.Error()
			}
		}
		st.Consul.DataSets = dataSets(ws)
	}
	s.mu.Lock()
	st.Reload = s.lastReload
	s.mu.Unlock()
	for i := range st.Pools {
		st.Pools[i].History = s.history.graph(st.Pools[i].Name, now)
	}
	return st
}

func (s *server) statusHTML(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := statusPage.Execute(w, s.status()); err != nil {
		s.log.Error("status page", "err", err)
	}
}

func (s *server) statusJSON(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(s.status())
}
