package main

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// TestAllowListIPv4Mapped writes the allow lists IPv4-mapped and asks from
// plain IPv4 loopback: an operator who writes ::ffff:127.0.0.1 means the
// IPv4 client 127.0.0.1, and must not be refused.
func TestAllowListIPv4Mapped(t *testing.T) {
	config := strings.Replace(baseConfig, "dns:\n",
		"dns:\n  transfer_allow: [\"::ffff:127.0.0.0/104\"]\n  status_allow: [\"::ffff:127.0.0.1\"]\n", 1)
	srv, _ := runServer(t, writeConfig(t, config, goodZone))
	addr := srv.dns.BoundAddrs()[0].String()

	c := &dns.Client{Timeout: 2 * time.Second}
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion("_status.farm.example.com.", dns.TypeTXT), addr)
	if err != nil {
		t.Fatal(err)
	}
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0 {
		t.Errorf("TXT _status from 127.0.0.1, allowed as ::ffff:127.0.0.1: %s with %d records",
			dns.RcodeToString[r.Rcode], len(r.Answer))
	}

	tr := &dns.Transfer{DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second}
	envs, err := tr.In(new(dns.Msg).SetAxfr("farm.example.com."), addr)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for e := range envs {
		if e.Error != nil {
			t.Fatalf("AXFR from 127.0.0.1, allowed as ::ffff:127.0.0.0/104: %v", e.Error)
		}
		n += len(e.RR)
	}
	if n < 2 {
		t.Errorf("AXFR: %d records", n)
	}
}
