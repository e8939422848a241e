package health

import (
	"fmt"
	"strings"
	"time"
)

// DataSetKind names the kinds of Consul reads the watcher keeps up to date.
type DataSetKind string

const (
	// DataSetService is the blocking read of /v1/health/service/<name>.
	DataSetService DataSetKind = "service"
	// DataSetKV is the blocking recursive read of the load-report prefix.
	DataSetKV DataSetKind = "kv"
)

// DataSetStatus is the sync state of one long-poll loop.
type DataSetStatus struct {
	// Kind and Name identify the data set: a service name or the KV prefix.
	Kind DataSetKind
	// Name is the service name (DataSetService) or the KV prefix (DataSetKV).
	Name string
	// Index is the Consul index of the last successful read.
	Index uint64
	// LastSuccess is when Consul last answered; zero if it never has.
	LastSuccess time.Time
	// LastError is the most recent failure, nil if none since the start.
	LastError error
	// LastErrorAt is when LastError happened.
	LastErrorAt time.Time
	// Failing is set while the most recent attempt failed.
	Failing bool
	// Errors counts failed reads since the start.
	Errors uint64
}

// Status is an immutable view of the watcher's sync state and counters, for
// /readyz and a metrics collector. It changes more often than the Snapshot
// (every answer from Consul refreshes it) without bumping the generation.
type Status struct {
	// Started is when Run began; zero before.
	Started time.Time
	// MaxStaleness is how long the data may go without a successful sync
	// before Ready reports false.
	MaxStaleness time.Duration
	// DataSets lists the KV prefix first, then the services by name.
	DataSets []DataSetStatus
	// MalformedTotal counts malformed load values (KV reports and service
	// meta) seen, each distinct bad value once.
	MalformedTotal uint64
	// InvalidAddressTotal counts instance addresses that are not IPs, each
	// distinct bad value once.
	InvalidAddressTotal uint64
	// Publishes counts snapshots published since the start.
	Publishes uint64
	// Restored is when the state file the watcher started from was saved;
	// zero if it started empty.
	Restored time.Time
}

// ServingSaved reports whether some of the data served still comes from the
// state file: restored at start and not yet read from Consul in full.
func (s *Status) ServingSaved() bool {
	return !s.Restored.IsZero() && !s.Synced()
}

// Synced reports whether every data set has been read successfully at least once.
func (s *Status) Synced() bool {
	for _, d := range s.DataSets {
		if d.LastSuccess.IsZero() {
			return false
		}
	}
	return len(s.DataSets) > 0
}

// Ready reports whether the data is fresh enough to be trusted, and if not,
// why. A data set is too old when its last success, or the start if it has
// never succeeded, is more than MaxStaleness ago. Whatever Ready says, the
// last good snapshot keeps being served; at start-up without Consul farmdns
// is ready for MaxStaleness, so static records are answered meanwhile.
func (s *Status) Ready(now time.Time) (bool, string) {
	if s.Started.IsZero() {
		return false, "health: watcher not running"
	}
	var reasons []string
	for _, d := range s.DataSets {
		ref, what := d.LastSuccess, "last successful Consul read"
		if ref.IsZero() {
			ref, what = s.Started, "no successful Consul read since the start"
		}
		if age := now.Sub(ref); age > s.MaxStaleness {
			r := fmt.Sprintf("%s %s: %s %v ago (max staleness %v)", d.Kind, d.Name, what, age.Round(time.Second), s.MaxStaleness)
			if d.LastError != nil {
				r += ": " + d.LastError.Error()
			}
			reasons = append(reasons, r)
		}
	}
	if len(reasons) > 0 {
		return false, strings.Join(reasons, "; ")
	}
	return true, ""
}
