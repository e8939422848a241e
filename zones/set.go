package zones

import (
	"fmt"

	"github.com/miekg/dns"
)

// Set is the immutable collection of zones one server configuration serves.
type Set struct {
	zones map[string]*Zone // by origin
}

// NewSet builds a set; two zones with the same origin are an error.
func NewSet(zs ...*Zone) (*Set, error) {
	s := &Set{zones: make(map[string]*Zone, len(zs))}
	for _, z := range zs {
		if s.zones[z.Origin] != nil {
			return nil, fmt.Errorf("zone %s is configured twice", z.Origin)
		}
		s.zones[z.Origin] = z
	}
	return s, nil
}

// Find returns the zone with the longest origin at or above name, the name
// of a question in any case and spelling, or nil when no zone holds it. A
// zone that is delegated from a parent zone in the same set takes
// precedence, as it is the more specific authority.
func (s *Set) Find(name string) *Zone {
	lname, ok := CanonicalName(name)
	if !ok {
		return nil
	}
	for i, end := 0, false; !end; i, end = dns.NextLabel(lname, i) {
		if z := s.zones[lname[i:]]; z != nil {
			return z
		}
	}
	return s.zones["."]
}

// Zones returns every zone of the set, in no particular order.
func (s *Set) Zones() []*Zone {
	zs := make([]*Zone, 0, len(s.zones))
	for _, z := range s.zones {
		zs = append(zs, z)
	}
	return zs
}
