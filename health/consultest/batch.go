package consultest

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/consul/api"
)

// RegisterBatch registers many instances as Register does, in transactions
// of at most 64 operations run by a few workers: tens of thousands of
// instances take seconds instead of one Raft write each. The nodes are
// written first, from each one's first instance in the list.
func (a *Agent) RegisterBatch(ins []Instance) error {
	var nodes, svcs []*api.TxnOp
	seen := map[string]bool{}
	for _, in := range ins {
		id := cmpOr(in.ID, in.Service)
		if !seen[in.Node] {
			seen[in.Node] = true
			nodes = append(nodes, &api.TxnOp{Node: &api.NodeTxnOp{Verb: api.NodeSet, Node: api.Node{Node: in.Node, Address: in.NodeAddress}}})
		}
		svcs = append(svcs,
			&api.TxnOp{Service: &api.ServiceTxnOp{Verb: api.ServiceSet, Node: in.Node, Service: api.AgentService{
				ID: id, Service: in.Service, Address: in.Address, Port: in.Port, Tags: in.Tags, Meta: in.Meta,
			}}},
			&api.TxnOp{Check: &api.CheckTxnOp{Verb: api.CheckSet, Check: api.HealthCheck{
				Node: in.Node, CheckID: ServiceCheckID(id), Name: "service " + id,
				Status: cmpOr(in.Status, api.HealthPassing), ServiceID: id,
			}}})
	}
	if err := a.txnParallel(nodes); err != nil {
		return err
	}
	return a.txnParallel(svcs)
}

// txnParallel applies ops in transactions of 64 (pairs never split, as
// RegisterBatch's service and check are adjacent and 64 is even), four at a
// time.
func (a *Agent) txnParallel(ops []*api.TxnOp) error {
	const size, workers = 64, 4
	chunks := make(chan api.TxnOps)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for c := range chunks {
				if errs[w] == nil {
					errs[w] = a.txn(c)
				}
			}
		})
	}
	for len(ops) > 0 {
		n := min(size, len(ops))
		chunks <- ops[:n]
		ops = ops[n:]
	}
	close(chunks)
	wg.Wait()
	return errors.Join(errs...)
}

func (a *Agent) txn(ops api.TxnOps) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	ok, resp, _, err := a.Client.Txn().Txn(ops, (&api.QueryOptions{}).WithContext(ctx))
	switch {
	case err != nil:
		return fmt.Errorf("txn: %w", err)
	case !ok:
		return fmt.Errorf("txn rolled back: %v", resp.Errors)
	}
	return nil
}

// PutKVBatchParallel is PutKVBatch with four transactions at a time.
func (a *Agent) PutKVBatchParallel(pairs map[string][]byte) error {
	ops := make([]*api.TxnOp, 0, len(pairs))
	for k, v := range pairs {
		ops = append(ops, &api.TxnOp{KV: &api.KVTxnOp{Verb: api.KVSet, Key: k, Value: v}})
	}
	return a.txnParallel(ops)
}

func cmpOr(v, def string) string {
	if v == "" {
		return def
	}
	return v
}
