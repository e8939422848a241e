// Package health keeps farmdns's view of the farm: which Consul service instances
// exist, whether they are healthy or draining, and how loaded each one is.
package health

import (
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"time"
)

// DefaultLoadPrefix is the Consul KV prefix under which node agents write load reports.
const DefaultLoadPrefix = "farmdns/load"

// LoadReport is the JSON document a node agent writes to Consul KV at
// LoadKey(prefix, service, node, serviceID). It is the contract between
// farmdns-agent (or any other reporter) and the farmdns server.
type LoadReport struct {
	// Connections is the number of connections open now.
	Connections int64 `json:"connections"`
	// Accepted counts connections accepted since the reporter started. It only
	// grows, except that a reporter restart resets it to zero.
	Accepted int64 `json:"accepted"`
	// Capacity is the most connections the instance should hold; 0 means not given.
	Capacity int64 `json:"capacity,omitempty"`
	// Updated is when the reporter counted Connections.
	Updated time.Time `json:"updated"`
}

// LoadKey returns the KV key holding the load report of one service instance.
func LoadKey(prefix, service, node, serviceID string) string {
	return path.Join(prefix, service, node, serviceID)
}

// ParseLoadReport decodes and validates a load report. Unknown fields are
// allowed so that newer reporters can add some without breaking older servers.
func ParseLoadReport(b []byte) (LoadReport, error) {
	var r struct {
		Connections *int64    `json:"connections"`
		Accepted    int64     `json:"accepted"`
		Capacity    int64     `json:"capacity"`
		Updated     time.Time `json:"updated"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return LoadReport{}, fmt.Errorf("load report: %w", err)
	}
	switch {
	case r.Connections == nil:
		return LoadReport{}, errors.New("load report: connections missing")
	case *r.Connections < 0:
		return LoadReport{}, fmt.Errorf("load report: connections %d is negative", *r.Connections)
	case r.Accepted < 0:
		return LoadReport{}, fmt.Errorf("load report: accepted %d is negative", r.Accepted)
	case r.Capacity < 0:
		return LoadReport{}, fmt.Errorf("load report: capacity %d is negative", r.Capacity)
	case r.Updated.IsZero():
		return LoadReport{}, errors.New("load report: updated missing")
	}
	return LoadReport{Connections: *r.Connections, Accepted: r.Accepted, Capacity: r.Capacity, Updated: r.Updated}, nil
}
