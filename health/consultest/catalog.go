package consultest

import (
	"context"
	"fmt"
	"testing"

	"github.com/hashicorp/consul/api"
)

// Instance is a service instance on a catalog-registered node. Catalog
// registration lets one dev agent hold many nodes with distinct addresses.
type Instance struct {
	// Node and NodeAddress describe the node; NodeAddress is required.
	Node, NodeAddress string
	// Service is the service name; ID defaults to Service.
	Service, ID string
	// Address is the service address; empty means the node address.
	Address string
	// Port is the service port.
	Port int
	// Tags and Meta are copied to the service.
	Tags []string
	// Meta is the service meta.
	Meta map[string]string
	// Status is the status of the instance's service check "service:<ID>";
	// empty means passing.
	Status string
}

// ServiceCheckID is the ID of the check Register gives an instance.
func ServiceCheckID(serviceID string) string { return "service:" + serviceID }

// Register registers (or re-registers) in's node, service and service check.
func (a *Agent) Register(t testing.TB, in Instance) {
	t.Helper()
	if err := a.RegisterErr(in); err != nil {
		t.Fatalf("consultest: %v", err)
	}
}

// RegisterErr is Register returning the error, for use off the test goroutine.
func (a *Agent) RegisterErr(in Instance) error {
	id := in.ID
	if id == "" {
		id = in.Service
	}
	status := in.Status
	if status == "" {
		status = api.HealthPassing
	}
	wo, cancel := a.writeOpts()
	defer cancel()
	_, err := a.Client.Catalog().Register(&api.CatalogRegistration{
		Node:    in.Node,
		Address: in.NodeAddress,
		Service: &api.AgentService{
			ID: id, Service: in.Service, Address: in.Address, Port: in.Port,
			Tags: in.Tags, Meta: in.Meta,
		},
		Check: &api.AgentCheck{
			Node: in.Node, CheckID: ServiceCheckID(id), Name: "service " + id,
			Status: status, ServiceID: id,
		},
	}, wo)
	if err != nil {
		return fmt.Errorf("register %s/%s: %w", in.Node, id, err)
	}
	return nil
}

// Deregister removes one service instance (and its checks) from a node.
func (a *Agent) Deregister(t testing.TB, node, serviceID string) {
	t.Helper()
	wo, cancel := a.writeOpts()
	defer cancel()
	if _, err := a.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node, ServiceID: serviceID}, wo); err != nil {
		t.Fatalf("consultest: deregister %s/%s: %v", node, serviceID, err)
	}
}

// SetCheck registers or updates a check on a catalog node. An empty serviceID
// makes it a node check, which applies to every service on the node.
func (a *Agent) SetCheck(t testing.TB, node, serviceID, checkID, status string) {
	t.Helper()
	if err := a.SetCheckErr(node, serviceID, checkID, status); err != nil {
		t.Fatalf("consultest: %v", err)
	}
}

// SetCheckErr is SetCheck returning the error.
func (a *Agent) SetCheckErr(node, serviceID, checkID, status string) error {
	wo, cancel := a.writeOpts()
	defer cancel()
	_, err := a.Client.Catalog().Register(&api.CatalogRegistration{
		Node:           node,
		SkipNodeUpdate: true,
		Check: &api.AgentCheck{
			Node: node, CheckID: checkID, Name: checkID, Status: status, ServiceID: serviceID,
		},
	}, wo)
	if err != nil {
		return fmt.Errorf("set check %s/%s to %s: %w", node, checkID, status, err)
	}
	return nil
}

// RemoveCheck deregisters a check from a catalog node.
func (a *Agent) RemoveCheck(t testing.TB, node, checkID string) {
	t.Helper()
	wo, cancel := a.writeOpts()
	defer cancel()
	if _, err := a.Client.Catalog().Deregister(&api.CatalogDeregistration{Node: node, CheckID: checkID}, wo); err != nil {
		t.Fatalf("consultest: remove check %s/%s: %v", node, checkID, err)
	}
}

// PutKV writes one KV pair.
func (a *Agent) PutKV(t testing.TB, key string, value []byte) {
	t.Helper()
	if err := a.PutKVErr(key, value); err != nil {
		t.Fatalf("consultest: %v", err)
	}
}

// PutKVErr is PutKV returning the error.
func (a *Agent) PutKVErr(key string, value []byte) error {
	wo, cancel := a.writeOpts()
	defer cancel()
	if _, err := a.Client.KV().Put(&api.KVPair{Key: key, Value: value}, wo); err != nil {
		return fmt.Errorf("put %s: %w", key, err)
	}
	return nil
}

// PutKVBatch writes many pairs in transactions of at most 64 operations,
// which is far cheaper for the agent than one write per key.
func (a *Agent) PutKVBatch(pairs map[string][]byte) error {
	ops := make(api.TxnOps, 0, 64)
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
		defer cancel()
		ok, resp, _, err := a.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
		ops = ops[:0]
		switch {
		case err != nil:
			return fmt.Errorf("kv txn: %w", err)
		case !ok:
			return fmt.Errorf("kv txn rolled back: %v", resp.Errors)
		}
		return nil
	}
	for k, v := range pairs {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: k, Value: v}})
		if len(ops) == cap(ops) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// DeleteKV deletes one key.
func (a *Agent) DeleteKV(t testing.TB, key string) {
	t.Helper()
	wo, cancel := a.writeOpts()
	defer cancel()
	if _, err := a.Client.KV().Delete(key, wo); err != nil {
		t.Fatalf("consultest: delete %s: %v", key, err)
	}
}
