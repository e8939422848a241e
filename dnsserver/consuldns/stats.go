package consuldns

import (
	"cmp"
	"slices"
	"time"

	"github.com/farmdns/farmdns/policy"
)

// PoolStats is the ledger of one asked service and tag filter.
type PoolStats struct {
	Service, Tag string // lower case; Tag "" for the whole service
	Targets      []policy.TargetStats
}

// AllStats returns the pools of every service and tag filter asked so far,
// by service then tag: only what clients asked for, so the set stays as
// small as the names in use.
func (b *Balanced) AllStats(now time.Time) []PoolStats {
	var out []PoolStats
	b.pools.Range(func(k, v any) bool {
		key := k.(poolKey)
		if p := v.(*balancedSlot).cur.Load(); p != nil {
			out = append(out, PoolStats{Service: key.service, Tag: key.tag, Targets: p.pool.Stats(now)})
		}
		return true
	})
	slices.SortFunc(out, func(a, b PoolStats) int {
		return cmp.Or(cmp.Compare(a.Service, b.Service), cmp.Compare(a.Tag, b.Tag))
	})
	return out
}
