//go:build !linux

package dnsserver

import (
	"errors"
	"net/netip"
	"syscall"
)

// enablePktinfo refuses: only Linux is supported here, and a wildcard socket
// without the queries' destinations would answer from the wrong address.
func enablePktinfo(string, syscall.RawConn) error {
	return errors.New("wildcard listen addresses are supported on Linux only; list each address to serve")
}

func parsePktinfo([]byte) (netip.Addr, uint32, bool) { return netip.Addr{}, 0, false }

func appendPktinfo(oob []byte, _ bool, _ netip.Addr, _ uint32) []byte { return oob }
