// Command countproxy forwards HTTP to a Consul agent and counts what passes:
// GET /countproxy returns "requests bytes_in bytes_out" so far. Used by
// .ci/consuldns-scale.sh to see what farmdns asks of Consul.
//
//	countproxy -listen 127.0.0.1:0 -consul 127.0.0.1:8500
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync/atomic"
)

type counter struct {
	requests, in, out atomic.Int64
	proxy             *httputil.ReverseProxy
}

// countBody counts the bytes read from a response body.
type countBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c countBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *counter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/countproxy" {
		fmt.Fprintf(w, "%d %d %d\n", c.requests.Load(), c.in.Load(), c.out.Load())
		return
	}
	c.requests.Add(1)
	// Request line and headers, roughly; bodies are counted exactly.
	c.out.Add(int64(len(r.Method) + len(r.URL.RequestURI()) + 64))
	if r.Body != nil {
		r.Body = countBody{r.Body, &c.out}
	}
	c.proxy.ServeHTTP(w, r)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	consul := flag.String("consul", "127.0.0.1:8500", "Consul agent HTTP address")
	flag.Parse()
	target, err := url.Parse("http://" + *consul)
	if err != nil {
		log.Fatal(err)
	}
	c := &counter{proxy: httputil.NewSingleHostReverseProxy(target)}
	c.proxy.FlushInterval = -1
	c.proxy.ModifyResponse = func(resp *http.Response) error {
		c.in.Add(256) // status line and headers, roughly
		resp.Body = countBody{resp.Body, &c.in}
		return nil
	}
	log.Fatal(http.ListenAndServe(*listen, c))
}
