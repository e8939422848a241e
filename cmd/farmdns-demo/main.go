// Command farmdns-demo plays the farm's two other parts for `make demo`:
//
//	farmdns-demo node -listen 127.0.0.11:8081
//	    a stand-in WebSocket server: accepts TCP connections and holds them
//	farmdns-demo clients -dns 127.0.0.1:5380 -name _ws._tcp.farm.example.com -rate 20 -count 400
//	    clients that look the farm up in farmdns (SRV: port and address) and
//	    connect to the first record, as long-lived clients do, then stay
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: farmdns-demo node|clients [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "node":
		err = node(ctx, os.Args[2:])
	case "clients":
		err = clients(ctx, os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		log.Fatal(err)
	}
}

// node accepts connections and keeps them open until the peer closes them.
func node(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.11:8081", "address to accept connections on")
	fs.Parse(args)
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); l.Close() }()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(io.Discard, c)
		}()
	}
}

// clients opens count connections at rate per second to what farmdns answers.
func clients(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("clients", flag.ExitOnError)
	server := fs.String("dns", "127.0.0.1:5380", "farmdns address")
	name := fs.String("name", "_ws._tcp.farm.example.com.", "SRV name to look up")
	rate := fs.Float64("rate", 20, "new clients per second")
	count := fs.Int("count", 400, "clients in all")
	fs.Parse(args)
	c := &dns.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(time.Duration(float64(time.Second) / *rate))
	defer tick.Stop()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	per := map[string]int{}
	for len(conns) < *count {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		addr, err := lookup(c, *server, dns.Fqdn(*name))
		if err != nil {
			log.Printf("lookup: %v", err)
			continue
		}
		conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			log.Printf("connect %s: %v", addr, err)
			continue
		}
		conns = append(conns, conn)
		per[addr]++
		if len(conns)%50 == 0 {
			log.Printf("%d clients connected: %v", len(conns), per)
		}
	}
	log.Printf("all %d clients connected: %v; holding them until interrupted", len(conns), per)
	<-ctx.Done()
	return nil
}

// lookup returns host:port of the first SRV record, with the address from
// the additional section.
func lookup(c *dns.Client, server, name string) (string, error) {
	r, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, dns.TypeSRV), server)
	if err != nil {
		return "", err
	}
	if len(r.Answer) == 0 {
		return "", fmt.Errorf("%s: no SRV records (%s)", name, dns.RcodeToString[r.Rcode])
	}
	srv, ok := r.Answer[0].(*dns.SRV)
	if !ok {
		return "", fmt.Errorf("%s: not an SRV record: %v", name, r.Answer[0])
	}
	for _, rr := range r.Extra {
		if a, ok := rr.(*dns.A); ok && dns.CanonicalName(a.Hdr.Name) == dns.CanonicalName(srv.Target) {
			return net.JoinHostPort(a.A.String(), fmt.Sprint(srv.Port)), nil
		}
	}
	return "", fmt.Errorf("%s: no address for %s", name, srv.Target)
}
