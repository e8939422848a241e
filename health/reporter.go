package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"
)

// ErrDenied is wrapped by Reporter errors when Consul refused a request for
// lack of ACL permissions, so that callers can choose a fallback.
var ErrDenied = errors.New("permission denied")

// ErrNotRegistered is wrapped by Reporter errors when the local Consul agent
// does not know the service instance.
var ErrNotRegistered = errors.New("service instance not registered with the local Consul agent")

// maintenanceReasonPrefix marks the maintenance mode a Reporter enables, so
// that it never lifts a maintenance an operator set by hand.
const maintenanceReasonPrefix = "farmdns-agent: "

// Reporter is the writing side of the load contract: what a node agent tells
// Consul about one service instance it runs beside. It writes LoadReports to
// KV, registers and deregisters the instance with its local Consul agent,
// keeps a TTL check alive, and switches maintenance mode. It holds no state
// besides the client; every call is bounded by its context.
type Reporter struct {
	client *api.Client
	prefix string
}

// NewReporter returns a Reporter writing load reports under prefix (use
// DefaultLoadPrefix unless the servers are configured otherwise).
func NewReporter(client *api.Client, prefix string) *Reporter {
	return &Reporter{client: client, prefix: prefix}
}

// Instance describes a service instance to register with the local agent.
type Instance struct {
	// Service is the Consul service name.
	Service string
	// ID is the service instance ID, unique on the node.
	ID string
	// Address is the instance address; empty means the node's address.
	Address string
	// Port is the port clients connect to.
	Port int
	// Tags are the instance tags.
	Tags []string
	// Meta is the instance metadata (for example "shard").
	Meta map[string]string
	// Check is the instance's health check.
	Check Check
}

// Check is the health check registered with an instance. At most one of TTL
// and TCP is set; with neither the instance is registered without a check.
type Check struct {
	// TTL makes a TTL check that the reporter must pass (PassTTL) at least
	// this often, or the instance turns critical.
	TTL time.Duration
	// TCP makes a TCP check: the Consul agent connects to this host:port
	// every Interval and waits at most Timeout.
	TCP string
	// Interval is how often a TCP check runs.
	Interval time.Duration
	// Timeout bounds one TCP check.
	Timeout time.Duration
	// DeregisterAfter makes the Consul agent remove an instance whose check
	// has been critical this long (at least a minute); 0 means never.
	DeregisterAfter time.Duration
}

// CheckID returns the ID of the check Register gives instance id.
func CheckID(serviceID string) string { return "service:" + serviceID }

// NodeName returns the node name of the Consul agent the client talks to.
// When the ACL token may not read the agent, the error wraps ErrDenied.
func (r *Reporter) NodeName(ctx context.Context) (string, error) {
	var self struct {
		Config struct{ NodeName string }
	}
	if _, err := r.client.Raw().Query("/v1/agent/self", &self, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return "", fmt.Errorf("consul: read agent node name: %w", classify(err))
	}
	if self.Config.NodeName == "" {
		return "", errors.New("consul: agent reported an empty node name")
	}
	return self.Config.NodeName, nil
}

// PutLoad writes rep as the load report of one instance.
func (r *Reporter) PutLoad(ctx context.Context, service, node, serviceID string, rep LoadReport) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return fmt.Errorf("consul: encode load report: %w", err)
	}
	key := LoadKey(r.prefix, service, node, serviceID)
	if _, err := r.client.KV().Put(&api.KVPair{Key: key, Value: b}, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: put %s: %w", key, classify(err))
	}
	return nil
}

// DeleteLoad removes the load report of one instance.
func (r *Reporter) DeleteLoad(ctx context.Context, service, node, serviceID string) error {
	key := LoadKey(r.prefix, service, node, serviceID)
	if _, err := r.client.KV().Delete(key, (&api.WriteOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: delete %s: %w", key, classify(err))
	}
	return nil
}

// Register registers (or re-registers, replacing its checks) the instance
// with the local Consul agent. A TTL check starts critical: the instance is
// not handed out before the first PassTTL.
func (r *Reporter) Register(ctx context.Context, in Instance) error {
	reg := &api.AgentServiceRegistration{
		ID: in.ID, Name: in.Service, Address: in.Address, Port: in.Port,
		Tags: in.Tags, Meta: in.Meta,
	}
	c := in.Check
	if c.TTL > 0 || c.TCP != "" {
		chk := &api.AgentServiceCheck{
			CheckID: CheckID(in.ID),
			Name:    "farmdns-agent " + in.ID,
			Status:  api.HealthCritical,
		}
		if c.TTL > 0 {
			chk.TTL = c.TTL.String()
		} else {
			chk.TCP = c.TCP
			chk.Interval = c.Interval.String()
			chk.Timeout = c.Timeout.String()
		}
		if c.DeregisterAfter > 0 {
			chk.DeregisterCriticalServiceAfter = c.DeregisterAfter.String()
		}
		reg.Check = chk
	}
	opts := api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)
	if err := r.client.Agent().ServiceRegisterOpts(reg, opts); err != nil {
		return fmt.Errorf("consul: register service %s: %w", in.ID, classify(err))
	}
	return nil
}

// Registered reports whether the local agent knows instance serviceID.
func (r *Reporter) Registered(ctx context.Context, serviceID string) (bool, error) {
	_, _, err := r.client.Agent().Service(serviceID, (&api.QueryOptions{}).WithContext(ctx))
	switch err = classify(err); {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNotRegistered):
		return false, nil
	}
	return false, fmt.Errorf("consul: read service %s: %w", serviceID, err)
}

// Deregister removes the instance (and its checks) from the local agent.
// Removing an instance that is not registered is not an error.
func (r *Reporter) Deregister(ctx context.Context, serviceID string) error {
	err := classify(r.client.Agent().ServiceDeregisterOpts(serviceID, (&api.QueryOptions{}).WithContext(ctx)))
	if err != nil && !errors.Is(err, ErrNotRegistered) {
		return fmt.Errorf("consul: deregister service %s: %w", serviceID, err)
	}
	return nil
}

// SetTTL sets the status of the instance's TTL check: passing when ok,
// critical otherwise, with note as the check output. A missing check (the
// agent lost the registration) wraps ErrNotRegistered.
func (r *Reporter) SetTTL(ctx context.Context, serviceID string, ok bool, note string) error {
	status := api.HealthPassing
	if !ok {
		status = api.HealthCritical
	}
	if err := r.client.Agent().UpdateTTLOpts(CheckID(serviceID), note, status, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return fmt.Errorf("consul: update TTL check of %s: %w", serviceID, classify(err))
	}
	return nil
}

// EnableMaintenance puts the instance in maintenance mode: its health turns
// critical, so farmdns stops handing it out, but it stays registered.
func (r *Reporter) EnableMaintenance(ctx context.Context, serviceID, reason string) error {
	err := r.client.Agent().EnableServiceMaintenanceOpts(serviceID, maintenanceReasonPrefix+reason, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("consul: enable maintenance of %s: %w", serviceID, classify(err))
	}
	return nil
}

// DisableOwnMaintenance lifts the maintenance mode of the instance if, and
// only if, a Reporter enabled it; a maintenance set by an operator stays. It
// reports whether it lifted one.
func (r *Reporter) DisableOwnMaintenance(ctx context.Context, serviceID string) (bool, error) {
	checks, err := r.client.Agent().ChecksWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return false, fmt.Errorf("consul: read checks of %s: %w", serviceID, classify(err))
	}
	// The agent names the maintenance check "_service_maintenance:<id>" and
	// keeps the reason in its notes.
	c, ok := checks["_service_maintenance:"+serviceID]
	if !ok || !strings.HasPrefix(c.Notes, maintenanceReasonPrefix) {
		return false, nil
	}
	if err := r.client.Agent().DisableServiceMaintenanceOpts(serviceID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		return false, fmt.Errorf("consul: disable maintenance of %s: %w", serviceID, classify(err))
	}
	return true, nil
}

// classify wraps Consul's status errors in the sentinel errors above.
func classify(err error) error {
	var se api.StatusError
	if !errors.As(err, &se) {
		return err
	}
	switch {
	case se.Code == http.StatusForbidden:
		return fmt.Errorf("%w: %w", ErrDenied, err)
	case se.Code == http.StatusNotFound,
		// UpdateTTL on an unknown check answers 500 "Unknown check ID".
		se.Code == http.StatusInternalServerError && strings.Contains(se.Body, "Unknown check"):
		return fmt.Errorf("%w: %w", ErrNotRegistered, err)
	}
	return err
}
