package dnsserver

import "net/netip"

// A UDP socket bound to a wildcard address (0.0.0.0, ::) receives queries
// sent to any of the host's addresses, but the kernel picks a reply's source
// address from the route back to the client, which on a host with several
// addresses may not be the one the client asked: the resolver then drops the
// reply. So on such sockets each query's destination is read from an
// IP_PKTINFO or IPV6_PKTINFO control message and the reply is sent from it,
// as Knot and NSD do. Sockets bound to one address need none of this and keep
// the plain read and write.

// oobSize holds the one pktinfo control message a query brings.
const oobSize = 128

// wildcardHost reports whether host (from host:port) listens on every address.
func wildcardHost(host string) bool {
	if host == "" {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsUnspecified()
}
