package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
	"gopkg.in/yaml.v3"

	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/dnsserver"
	"github.com/farmdns/farmdns/dnsserver/consuldns"
	"github.com/farmdns/farmdns/dnsserver/rrl"
	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/policy"
	"github.com/farmdns/farmdns/zones"
)

// processSeed makes this instance's random choices its own: two farmdns
// instances answering the same resolvers must not agree on the same targets.
var processSeed = rand.Uint64()

// Config is the server's YAML configuration. Unknown keys are errors, so a
// typo never silently falls back to a default.
type Config struct {
	DNS    DNSConfig     `yaml:"dns"`
	HTTP   HTTPConfig    `yaml:"http"`
	Log    LogConfig     `yaml:"log"`
	Consul ConsulSection `yaml:"consul"`
	Zones  []ZoneConfig  `yaml:"zones"`
	// ConsulDNS answers Consul's DNS names; see consuldns.go.
	ConsulDNS *ConsulDNSConfig `yaml:"consul_dns"`

	dir  string // relative zone files are read from here
	seed uint64 // this process's random seed for the policies

	consulDNS *consuldns.Resolver // built from ConsulDNS by validate
	// consulDNSConfig is what consulDNS was built with, and consulPolicy
	// the policy of answers: N (nil for 0), for attachConsulDNS.
	consulDNSConfig consuldns.Config
	consulPolicy    *policy.Config
}

// DNSConfig is the `dns:` block.
type DNSConfig struct {
	Listen []string `yaml:"listen"`
	// NSID defaults to the host name; "" turns it off.
	NSID *string `yaml:"nsid"`
	// Identity answers CHAOS hostname.bind and id.server; defaults to the NSID;
	// "" refuses them.
	Identity *string `yaml:"identity"`
	// Version answers CHAOS version.bind; refused unless set.
	Version           *string       `yaml:"version"`
	MaxUDPSize        int           `yaml:"max_udp_size"`
	TCPIdleTimeout    time.Duration `yaml:"tcp_idle_timeout"`
	MaxTCPConnections int           `yaml:"max_tcp_connections"`
	// TransferAllow lists addresses or prefixes allowed to AXFR over TCP.
	TransferAllow []string `yaml:"transfer_allow"`
	// StatusAllow lists who may ask TXT _status.<zone>; default: loopback.
	StatusAllow []string `yaml:"status_allow"`
	// ECS makes the client subnet of a query's EDNS Client Subnet option
	// the asker of a pool's choice (dnsserver.Options.ECS). Default on: a
	// resolver sends ECS only to servers it is configured or has learnt to
	// send it to, and one that does so wants per-network answers; only pool
	// answers carry a nonzero scope, so static names cache as before.
	ECS *bool `yaml:"ecs"`
	// RRL is response rate limiting; off unless responses_per_second is set.
	RRL RRLConfig `yaml:"rrl"`
}

// RRLConfig is the `dns.rrl:` block: response rate limiting of UDP replies
// (package dnsserver/rrl). Off by default: benchmarks and tests flood from
// one address.
type RRLConfig struct {
	// ResponsesPerSecond per client prefix and response class; 0: off.
	ResponsesPerSecond int `yaml:"responses_per_second"`
	// Slip: every Nth limited response is sent truncated, so a real client
	// retries over TCP; 0 drops them all. Default 2.
	Slip *int `yaml:"slip"`
	// IPv4Prefix and IPv6Prefix group clients; default 24 and 56.
	IPv4Prefix int `yaml:"ipv4_prefix"`
	IPv6Prefix int `yaml:"ipv6_prefix"`
	// Window is how long a prefix's debt is remembered; default 15 s.
	Window time.Duration `yaml:"window"`
	// Exempt addresses and prefixes are never limited.
	Exempt []string `yaml:"exempt"`
	// LogOnly counts and logs what would be limited, and limits nothing.
	LogOnly bool `yaml:"log_only"`
}

// HTTPConfig is the `http:` block.
type HTTPConfig struct {
	Listen string `yaml:"listen"`
	// TokenFile holds a bearer token that lets a request change state
	// (POST /debug/querylog) from anywhere; without it only local requests
	// with the admin header may. Read at start and on every reload.
	TokenFile string `yaml:"token_file"`

	token       adminhttp.Token // read from TokenFile; never printed
	idleTimeout time.Duration   // adminhttp.IdleTimeout; tests shorten it
}

// LogConfig is the `log:` block.
type LogConfig struct {
	Level string `yaml:"level"` // debug, info, warn, error
	// QuerySample is how many queries the query log's one line stands for
	// when it is switched on (SIGUSR1 or POST /debug/querylog).
	QuerySample uint32 `yaml:"query_sample"`
}

// ConsulSection is the `consul:` block: the client settings, shared with
// farmdns-agent, and how the watcher treats what it reads.
type ConsulSection struct {
	health.ConsulConfig `yaml:",inline"`
	LoadPrefix          string        `yaml:"load_prefix"`
	MaxReportAge        time.Duration `yaml:"max_report_age"`
	MaxStaleness        time.Duration `yaml:"max_staleness"`
	// StateFile keeps the last good catalog and loads for a start without
	// Consul; relative to the config file's directory.
	StateFile string `yaml:"state_file"`
}

// ZoneConfig is one entry of `zones:`.
type ZoneConfig struct {
	Origin string       `yaml:"origin"`
	File   string       `yaml:"file"`
	Pools  []PoolConfig `yaml:"pools"`
}

// PoolConfig is one load-balanced name of a zone. Unset keys take the
// policy's defaults (policy.DefaultConfig), which the simulator chose.
type PoolConfig struct {
	Name      string          `yaml:"name"`       // owner, relative to the origin; "@" is the apex
	Service   string          `yaml:"service"`    // Consul service of the targets
	Mode      *policy.Mode    `yaml:"mode"`       // nodes | shards
	Answers   *int            `yaml:"answers"`    // records per answer
	TTL       *time.Duration  `yaml:"ttl"`        // whole seconds
	TTLMin    *time.Duration  `yaml:"ttl_min"`    // shortest TTL for busy resolvers and failure waves
	Policy    *policy.Kind    `yaml:"policy"`     // least-loaded | weighted | round-robin
	Capacity  *int64          `yaml:"capacity"`   // per target, when Consul gives none
	ShardMeta string          `yaml:"shard_meta"` // shards mode: service meta key naming the shard
	LBService string          `yaml:"lb_service"` // shards mode: Consul service of the shards' LBs
	OnEmpty   *policy.OnEmpty `yaml:"on_empty"`   // fail-open | nodata | servfail
	SlowStart *time.Duration  `yaml:"slow_start"` // ramp-up of a new or recovered target; 0s: off
	TTLJitter *float64        `yaml:"ttl_jitter"` // largest relative change of each answer's TTL
	// SRV adds SRV records at _<service>._tcp.<name>, with targets named
	// <node>.nodes.<name> (nodes mode only).
	SRV bool `yaml:"srv"`
}

// policyConfig is the pool's policy: the defaults, with what the pool sets.
func (p PoolConfig) policyConfig() policy.Config {
	c := policy.DefaultConfig()
	set(&c.Mode, p.Mode)
	set(&c.Answers, p.Answers)
	set(&c.TTL, p.TTL)
	set(&c.TTLMin, p.TTLMin)
	set(&c.Policy, p.Policy)
	set(&c.Capacity, p.Capacity)
	set(&c.OnEmpty, p.OnEmpty)
	set(&c.SlowStart, p.SlowStart)
	set(&c.TTLJitter, p.TTLJitter)
	c.ShardMeta = p.ShardMeta
	return c
}

func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

// loadConfig reads and validates the config file; every problem found is
// returned, each naming its key.
func loadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	cfg, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg.dir = filepath.Dir(path)
	cfg.seed = processSeed
	return cfg, nil
}

func parseConfig(b []byte) (*Config, error) {
	cfg := &Config{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty file")
		}
		return nil, errors.New(strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:\n  ", ""))
	}
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

func (c *Config) setDefaults() {
	if len(c.DNS.Listen) == 0 {
		c.DNS.Listen = []string{"127.0.0.1:5380"}
	}
	if c.DNS.NSID == nil {
		host, _ := os.Hostname()
		c.DNS.NSID = &host
	}
	if c.DNS.Identity == nil {
		c.DNS.Identity = c.DNS.NSID
	}
	if c.DNS.StatusAllow == nil {
		c.DNS.StatusAllow = []string{"127.0.0.0/8", "::1"}
	}
	if c.DNS.MaxUDPSize == 0 {
		c.DNS.MaxUDPSize = dnsserver.DefaultMaxUDPSize
	}
	if c.DNS.ECS == nil {
		on := true
		c.DNS.ECS = &on
	}
	if c.DNS.TCPIdleTimeout == 0 {
		c.DNS.TCPIdleTimeout = 10 * time.Second
	}
	if c.DNS.MaxTCPConnections == 0 {
		c.DNS.MaxTCPConnections = 1000
	}
	if c.DNS.RRL.Slip == nil {
		c.DNS.RRL.Slip = new(int)
		*c.DNS.RRL.Slip = 2 // every other limited response: half reach a real client as TC
	}
	if c.DNS.RRL.IPv4Prefix == 0 {
		c.DNS.RRL.IPv4Prefix = 24
	}
	if c.DNS.RRL.IPv6Prefix == 0 {
		c.DNS.RRL.IPv6Prefix = 56 // what an ISP hands one customer
	}
	if c.DNS.RRL.Window == 0 {
		c.DNS.RRL.Window = 15 * time.Second
	}
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = "127.0.0.1:9153"
	}
	c.HTTP.idleTimeout = adminhttp.IdleTimeout
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.QuerySample == 0 {
		c.Log.QuerySample = 1
	}
}

func (c *Config) validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	for i, addr := range c.DNS.Listen {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(fmt.Sprintf("dns.listen[%d]", i), "%q is not host:port", addr)
		}
	}
	if n := len(*c.DNS.NSID); n > dnsserver.MaxNSID {
		// An identifier needs no more; a longer one would crowd the answers
		// out of small replies, or overflow its option.
		bad("dns.nsid", "%d octets, longer than %d", n, dnsserver.MaxNSID)
	}
	if c.DNS.MaxUDPSize < dns.MinMsgSize || c.DNS.MaxUDPSize > dns.MaxMsgSize {
		bad("dns.max_udp_size", "%d is not between 512 and 65535", c.DNS.MaxUDPSize)
	}
	// Under a second, a query may not arrive whole in time (the idle timeout
	// also bounds that); a long one lets idle clients sit on slots.
	if d := c.DNS.TCPIdleTimeout; d < time.Second || d > 10*time.Minute {
		bad("dns.tcp_idle_timeout", "%s is not between 1s and 10m0s", d)
	}
	if n := c.DNS.MaxTCPConnections; n < 1 || n > 1_000_000 {
		bad("dns.max_tcp_connections", "%d is not between 1 and 1000000", n)
	}
	for key, list := range map[string][]string{"dns.transfer_allow": c.DNS.TransferAllow, "dns.status_allow": c.DNS.StatusAllow} {
		for i, s := range list {
			if _, err := parsePrefix(s); err != nil {
				bad(fmt.Sprintf("%s[%d]", key, i), "%v", err)
			}
		}
	}
	c.DNS.RRL.validate(bad)
	if _, _, err := net.SplitHostPort(c.HTTP.Listen); err != nil {
		bad("http.listen", "%q is not host:port", c.HTTP.Listen)
	}
	if c.HTTP.TokenFile != "" {
		tok, err := adminhttp.ReadToken(c.HTTP.TokenFile)
		if err != nil {
			bad("http.token_file", "%v", err)
		}
		c.HTTP.token = tok
	}
	if _, err := logLevel(c.Log.Level); err != nil {
		bad("log.level", "%v", err)
	}
	if len(c.Zones) == 0 && c.ConsulDNS == nil {
		bad("zones", "no zones configured")
	}
	c.validateConsulDNS(bad)
	seen := map[string]bool{}
	for i, z := range c.Zones {
		key := fmt.Sprintf("zones[%d]", i)
		origin := dns.CanonicalName(z.Origin)
		switch {
		case z.Origin == "":
			bad(key+".origin", "missing")
		case !validName(origin) || origin == ".":
			bad(key+".origin", "%q is not a domain name", z.Origin)
		case seen[origin]:
			bad(key+".origin", "%s is configured twice", origin)
		}
		seen[origin] = true
		if z.File == "" {
			bad(key+".file", "missing")
		}
		names := map[string]bool{}
		for j, p := range z.Pools {
			pkey := fmt.Sprintf("%s.pools[%d]", key, j)
			switch {
			case p.Name == "":
				bad(pkey+".name", "missing")
			case names[poolOwner(p.Name, origin)]:
				bad(pkey+".name", "%q is configured twice", p.Name)
			}
			names[poolOwner(p.Name, origin)] = true
			if p.Service == "" {
				bad(pkey+".service", "missing")
			}
			for _, svc := range []struct{ key, name string }{{".service", p.Service}, {".lb_service", p.LBService}} {
				if svc.name == "" {
					continue // missing or not needed: said above and below
				}
				if err := health.CheckServiceName(svc.name); err != nil {
					bad(pkey+svc.key, "%v", err)
				}
			}
			pc := p.policyConfig()
			if err := pc.Validate(); err != nil {
				bad(pkey, "%v", err)
			}
			if (pc.Mode == policy.Shards) != (p.LBService != "") {
				bad(pkey+".lb_service", "required in shards mode, and only there")
			}
			if p.SRV && pc.Mode == policy.Shards {
				bad(pkey+".srv", "only in nodes mode: the LBs of a shard have no ports to balance")
			}
		}
	}
	if c.hasPools() || c.ConsulDNS != nil {
		if err := c.Consul.Validate(); err != nil {
			errs = append(errs, err)
		}
		if err := health.CheckLoadPrefix(c.Consul.LoadPrefix); err != nil {
			bad("consul.load_prefix", "%v", err)
		}
		for key, d := range map[string]time.Duration{"consul.max_report_age": c.Consul.MaxReportAge, "consul.max_staleness": c.Consul.MaxStaleness} {
			if d < 0 {
				bad(key, "must be positive")
			}
		}
		if f := c.stateFile(); f != "" {
			if fi, err := os.Stat(filepath.Dir(f)); err != nil || !fi.IsDir() {
				bad("consul.state_file", "directory of %s does not exist", f)
			} else if fi, err := os.Stat(f); err == nil && !fi.Mode().IsRegular() {
				bad("consul.state_file", "%s is not a regular file", f)
			}
		}
	}
	return errors.Join(errs...)
}

// validate checks the block whether rate limiting is on or not, so that
// switching it on never reveals an old mistake.
func (r RRLConfig) validate(bad func(key, format string, args ...any)) {
	if r.ResponsesPerSecond < 0 || r.ResponsesPerSecond > rrl.MaxResponsesPerSecond {
		bad("dns.rrl.responses_per_second", "%d is not between 0 (off) and %d", r.ResponsesPerSecond, rrl.MaxResponsesPerSecond)
	}
	if *r.Slip < 0 || *r.Slip > 10 {
		bad("dns.rrl.slip", "%d is not between 0 (drop all) and 10", *r.Slip)
	}
	if r.IPv4Prefix < 8 || r.IPv4Prefix > 32 {
		bad("dns.rrl.ipv4_prefix", "%d is not between 8 and 32", r.IPv4Prefix)
	}
	if r.IPv6Prefix < 16 || r.IPv6Prefix > 128 {
		bad("dns.rrl.ipv6_prefix", "%d is not between 16 and 128", r.IPv6Prefix)
	}
	if r.Window < time.Second || r.Window > time.Hour {
		bad("dns.rrl.window", "%s is not between 1s and 1h", r.Window)
	}
	for i, s := range r.Exempt {
		if _, err := parsePrefix(s); err != nil {
			bad(fmt.Sprintf("dns.rrl.exempt[%d]", i), "%v", err)
		}
	}
}

// limiter builds the rate limiter the block describes; nil when it is off.
func (r RRLConfig) limiter(log *slog.Logger) (*rrl.Limiter, error) {
	if r.ResponsesPerSecond == 0 {
		return nil, nil
	}
	return rrl.New(rrl.Config{
		ResponsesPerSecond: r.ResponsesPerSecond,
		Slip:               *r.Slip,
		IPv4Prefix:         r.IPv4Prefix,
		IPv6Prefix:         r.IPv6Prefix,
		Window:             r.Window,
		Exempt:             prefixes(r.Exempt),
		LogOnly:            r.LogOnly,
		Log:                log,
	})
}

// key tells two blocks apart: a reload swaps the limiter, and forgets every
// prefix's debt, only when the block changed.
func (r RRLConfig) key() string {
	return fmt.Sprint(r.ResponsesPerSecond, *r.Slip, r.IPv4Prefix, r.IPv6Prefix, r.Window, r.Exempt, r.LogOnly)
}

func (c *Config) hasPools() bool {
	for _, z := range c.Zones {
		if len(z.Pools) > 0 {
			return true
		}
	}
	return false
}

// poolOwner is the absolute, lower-case owner name of a pool.
func poolOwner(name, origin string) string {
	switch {
	case name == "@":
		return origin
	case dns.IsFqdn(name):
		return dns.CanonicalName(name)
	}
	return dns.CanonicalName(name + "." + origin)
}

// watcherConfig is what the Consul watcher must watch for the pools: every
// service and LB service, with the capacity the first pool naming it gives.
func (c *Config) watcherConfig() health.WatcherConfig {
	wc := health.WatcherConfig{
		LoadPrefix:   c.Consul.LoadPrefix,
		MaxReportAge: c.Consul.MaxReportAge,
		MaxStaleness: c.Consul.MaxStaleness,
		AllowStale:   c.Consul.AllowStale,
		StateFile:    c.stateFile(),
		Datacenter:   c.Consul.Datacenter,
	}
	seen := map[string]bool{}
	for _, z := range c.Zones {
		for _, p := range z.Pools {
			pc := p.policyConfig()
			for _, svc := range []string{p.Service, p.LBService} {
				if svc != "" && !seen[svc] {
					seen[svc] = true
					wc.Services = append(wc.Services, health.ServiceConfig{Name: svc, DefaultCapacity: pc.Capacity})
				}
			}
		}
	}
	return wc
}

func validName(s string) bool {
	_, ok := dns.IsDomainName(s)
	return ok
}

func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a prefix", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// prefixes converts validated addresses and prefixes.
func prefixes(list []string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(list))
	for _, s := range list {
		p, _ := parsePrefix(s)
		out = append(out, p)
	}
	return out
}

// stateFile resolves consul.state_file against the config file's directory.
func (c *Config) stateFile() string {
	if c.Consul.StateFile == "" || filepath.IsAbs(c.Consul.StateFile) {
		return c.Consul.StateFile
	}
	return filepath.Join(c.dir, c.Consul.StateFile)
}

// zoneFile resolves a zone file name against the config file's directory.
func (c *Config) zoneFile(z ZoneConfig) string {
	if filepath.IsAbs(z.File) {
		return z.File
	}
	return filepath.Join(c.dir, z.File)
}

// buildState loads every zone and builds the state to serve. It reports every
// problem, not just the first, so one -check run shows them all.
func buildState(c *Config) (*dnsserver.State, error) {
	var errs []error
	var zs []*zones.Zone
	var specs []dnsserver.PoolSpec
	for _, zc := range c.Zones {
		origin := dns.CanonicalName(zc.Origin)
		var bindings []zones.Binding
		for _, p := range zc.Pools {
			owner := poolOwner(p.Name, origin)
			bindings = append(bindings, zones.Binding{Name: owner, Types: []uint16{dns.TypeA, dns.TypeAAAA}, Pool: len(specs)})
			if p.SRV {
				srv, targets := dnsserver.SRVNames(p.Service, owner)
				bindings = append(bindings,
					zones.Binding{Name: srv, Types: []uint16{dns.TypeSRV}, Pool: len(specs)},
					zones.Binding{Name: targets, Children: true, Pool: len(specs)})
			}
			pc := p.policyConfig()
			pc.Seed = c.seed
			specs = append(specs, dnsserver.PoolSpec{
				Name: owner, Zone: origin, Service: p.Service, LBService: p.LBService, Policy: pc,
			})
		}
		z, err := zones.Load(zc.Origin, c.zoneFile(zc), bindings...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		zs = append(zs, z)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	set, err := zones.NewSet(zs...)
	if err != nil {
		return nil, err
	}
	opts := dnsserver.Options{
		NSID:       *c.DNS.NSID,
		MaxUDPSize: uint16(c.DNS.MaxUDPSize),
		Version:    c.DNS.Version,
		ECS:        *c.DNS.ECS,
	}
	if *c.DNS.Identity != "" {
		opts.Identity = c.DNS.Identity
	}
	opts.TransferFrom = prefixes(c.DNS.TransferAllow)
	opts.StatusFrom = prefixes(c.DNS.StatusAllow)
	return dnsserver.NewState(set, opts, specs...), nil
}
