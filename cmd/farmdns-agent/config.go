package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/farmdns/farmdns/cmd/farmdns-agent/conncount"
	"github.com/farmdns/farmdns/cmd/internal/adminhttp"
	"github.com/farmdns/farmdns/health"
)

// Config is the agent's YAML configuration file, decoded strictly (unknown
// keys are errors). Zero values mean "use the default"; Load fills them in.
// README-agent.md documents every key.
type Config struct {
	// Consul is the shared `consul:` block, the same as the server's.
	Consul health.ConsulConfig `yaml:"consul"`
	// Service names the instance whose load is reported.
	Service ServiceConfig `yaml:"service"`
	// Count says where the connection count comes from.
	Count CountConfig `yaml:"count"`
	// Report sets the counting and write-damping intervals.
	Report ReportConfig `yaml:"report"`
	// Drain sets the shutdown behaviour.
	Drain DrainConfig `yaml:"drain"`
	// HTTP is the agent's own HTTP endpoint.
	HTTP HTTPConfig `yaml:"http"`
	// Log sets the log level.
	Log LogConfig `yaml:"log"`
}

// ServiceConfig is the `service:` block.
type ServiceConfig struct {
	// Name is the Consul service name (required).
	Name string `yaml:"name"`
	// ID is the service instance ID; default <name>-<node>.
	ID string `yaml:"id"`
	// Node is the Consul node name; default: the local Consul agent's, else the hostname.
	Node string `yaml:"node"`
	// Address is the address registered for the instance; default: the node's.
	Address string `yaml:"address"`
	// Port is the port clients connect to.
	Port int `yaml:"port"`
	// Capacity is the most connections the instance should hold; 0: not given.
	Capacity int64 `yaml:"capacity"`
	// Register makes the agent register the instance and its check.
	Register bool `yaml:"register"`
	// Tags are registered with the instance.
	Tags []string `yaml:"tags"`
	// Meta is registered with the instance (for example shard: a).
	Meta map[string]string `yaml:"meta"`
	// Check is the health check registered with the instance.
	Check CheckConfig `yaml:"check"`
}

// CheckConfig is the `service.check:` block.
type CheckConfig struct {
	// Type is ttl (default), tcp or none.
	Type string `yaml:"type"`
	// TTL is the TTL of a ttl check (default 15s); the agent passes it every TTL/3.
	TTL time.Duration `yaml:"ttl"`
	// TCP is the host:port a tcp check connects to; default <address or 127.0.0.1>:<port>.
	TCP string `yaml:"tcp"`
	// Interval is how often a tcp check runs (default 5s).
	Interval time.Duration `yaml:"interval"`
	// Timeout bounds one tcp check (default 2s).
	Timeout time.Duration `yaml:"timeout"`
	// DeregisterAfter removes an instance critical this long (default 1m; 0s: never).
	DeregisterAfter *time.Duration `yaml:"deregister_after"`
}

// CountConfig is the `count:` block: exactly one of Ports, HTTP and File.
type CountConfig struct {
	// Ports are local listening ports whose established connections are counted.
	Ports []int `yaml:"ports"`
	// Method is how sockets are read: auto (default), netlink or proc.
	Method string `yaml:"method"`
	// HTTP scrapes a number from the application.
	HTTP *HTTPCountConfig `yaml:"http"`
	// File reads a number from a file.
	File *FileCountConfig `yaml:"file"`
}

// HTTPCountConfig is the `count.http:` block.
type HTTPCountConfig struct {
	// URL is fetched with GET each interval.
	URL string `yaml:"url"`
	// Metric is the Prometheus metric holding the connection count; empty:
	// the body is a plain number. Several series of the metric are added.
	Metric string `yaml:"metric"`
	// AcceptedMetric is an optional Prometheus counter of accepted connections.
	AcceptedMetric string `yaml:"accepted_metric"`
	// Timeout bounds one scrape (default: the report interval, at most 5s).
	Timeout time.Duration `yaml:"timeout"`
}

// FileCountConfig is the `count.file:` block.
type FileCountConfig struct {
	// Path is read each interval.
	Path string `yaml:"path"`
	// Metric and AcceptedMetric are as in HTTPCountConfig.
	Metric string `yaml:"metric"`
	// AcceptedMetric is an optional Prometheus counter of accepted connections.
	AcceptedMetric string `yaml:"accepted_metric"`
}

// ReportConfig is the `report:` block.
type ReportConfig struct {
	// Interval is how often to count (default 1s).
	Interval time.Duration `yaml:"interval"`
	// Heartbeat is the longest time between two writes (default 10s).
	Heartbeat time.Duration `yaml:"heartbeat"`
	// MinChange is "N%" or an absolute number (default 1%): a count that
	// moved this much since the last write is written early.
	MinChange string `yaml:"min_change"`
	// MinInterval is the shortest time between two writes (default: Interval).
	MinInterval time.Duration `yaml:"min_interval"`
	// Prefix is the KV prefix (default farmdns/load).
	Prefix string `yaml:"prefix"`
}

// DrainConfig is the `drain:` block.
type DrainConfig struct {
	// Grace is the longest time to wait for connections to bleed off (default 30s).
	Grace *time.Duration `yaml:"grace"`
	// Until ends the wait early once at most this many connections remain (default 0).
	Until int64 `yaml:"until"`
}

// HTTPConfig is the `http:` block.
type HTTPConfig struct {
	// Listen is the address of /metrics, /healthz and /drain; default
	// 127.0.0.1:9154; "off" disables the endpoint.
	Listen string `yaml:"listen"`
	// TokenFile holds a bearer token that lets POST /drain come from
	// anywhere; without it only local requests with the admin header may.
	TokenFile string `yaml:"token_file"`
}

// LogConfig is the `log:` block.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `yaml:"level"`
}

// settings is the validated configuration in the types the agent uses.
type settings struct {
	consul health.ConsulConfig

	service, serviceID, node string // serviceID and node may be "" (resolved at run time)
	address                  string
	port                     int
	capacity                 int64
	register                 bool
	tags                     []string
	meta                     map[string]string
	check                    health.Check // Instance.Check for registration
	ttl                      time.Duration

	ports    []uint16
	method   conncount.Method
	httpSrc  *HTTPCountConfig
	fileSrc  *FileCountConfig
	interval time.Duration

	damping damping
	prefix  string

	grace      time.Duration
	drainUntil int64

	listen    string
	httpToken adminhttp.Token // from http.token_file; never printed
	httpIdle  time.Duration   // adminhttp.IdleTimeout; tests shorten it
	logLevel  slog.Level
}

const (
	defaultListen    = "127.0.0.1:9154"
	maxPorts         = 64
	minReportPeriod  = 100 * time.Millisecond
	consulMinReap    = time.Minute // Consul's floor for deregister_critical_service_after
	defaultTTL       = 15 * time.Second
	defaultGrace     = 30 * time.Second
	defaultHeartbeat = 10 * time.Second
)

// serviceNameRE is what Consul accepts as a DNS-compatible service name;
// farmdns answers for these names, so nothing else makes sense.
var serviceNameRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)

// loadConfig reads, strictly decodes and validates a configuration file.
func loadConfig(path string) (*settings, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	s, err := parseConfig(b)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return s, nil
}

// parseConfig decodes YAML (unknown keys are errors) and validates it. Every
// error names the key it is about.
func parseConfig(b []byte) (*settings, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("empty file (service.name at least is required)")
		}
		return nil, explainYAML(b, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	return c.validate()
}

func (c *Config) validate() (*settings, error) {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", key, fmt.Sprintf(format, args...)))
	}
	s := &settings{consul: c.Consul}
	if err := c.Consul.Validate(); err != nil {
		errs = append(errs, err) // its messages name consul.* keys
	}

	// service
	sv := c.Service
	s.service, s.serviceID, s.node, s.address = sv.Name, sv.ID, sv.Node, sv.Address
	switch {
	case sv.Name == "":
		bad("service.name", "required")
	case !serviceNameRE.MatchString(sv.Name):
		bad("service.name", "%q: want letters, digits and inner dashes (a DNS label)", sv.Name)
	}
	for _, f := range []struct{ key, v string }{{"service.id", sv.ID}, {"service.node", sv.Node}} {
		if strings.ContainsAny(f.v, "/ \t\n") {
			bad(f.key, "%q: must not contain '/' or spaces (it is part of a KV key)", f.v)
		}
	}
	if sv.Address != "" && net.ParseIP(sv.Address) == nil && !validHostname(sv.Address) {
		bad("service.address", "%q: want an IP address or a host name", sv.Address)
	}
	s.port = sv.Port
	if sv.Port < 0 || sv.Port > 65535 {
		bad("service.port", "%d: out of range 1-65535", sv.Port)
	} else if sv.Register && sv.Port == 0 {
		bad("service.port", "required when service.register is true")
	}
	s.capacity = sv.Capacity
	if sv.Capacity < 0 {
		bad("service.capacity", "%d: must not be negative", sv.Capacity)
	}
	s.register, s.tags, s.meta = sv.Register, sv.Tags, sv.Meta
	for k := range sv.Meta {
		if k == "" || len(k) > 128 {
			bad("service.meta", "key %q: want 1-128 characters", k)
		}
	}
	c.validateCheck(s, bad)

	// count
	ct := c.Count
	sources := 0
	for _, set := range []bool{len(ct.Ports) > 0, ct.HTTP != nil, ct.File != nil} {
		if set {
			sources++
		}
	}
	switch {
	case sources > 1:
		bad("count", "set only one of count.ports, count.http and count.file")
	case sources == 0 && sv.Port > 0 && sv.Port <= 65535:
		s.ports = []uint16{uint16(sv.Port)} // count the service port itself
	case sources == 0:
		bad("count.ports", "required (or count.http, count.file, or service.port to count that port)")
	}
	if len(ct.Ports) > maxPorts {
		bad("count.ports", "%d ports: at most %d", len(ct.Ports), maxPorts)
	}
	seen := map[int]bool{}
	for i, p := range ct.Ports {
		switch {
		case p < 1 || p > 65535:
			bad(fmt.Sprintf("count.ports[%d]", i), "%d: out of range 1-65535", p)
		case seen[p]:
			bad(fmt.Sprintf("count.ports[%d]", i), "%d: listed twice", p)
		default:
			seen[p] = true
			s.ports = append(s.ports, uint16(p))
		}
	}
	m, err := conncount.ParseMethod(ct.Method)
	if err != nil {
		bad("count.method", "%v", err)
	} else if ct.Method != "" && len(s.ports) == 0 && sources == 1 {
		bad("count.method", "only applies to count.ports")
	}
	s.method = m

	// report (before count.http, whose timeout defaults to the interval)
	r := c.Report
	s.interval = orDefault(r.Interval, time.Second)
	if s.interval < minReportPeriod {
		bad("report.interval", "%v: at least %v", s.interval, minReportPeriod)
	}
	hb := orDefault(r.Heartbeat, defaultHeartbeat)
	if hb < s.interval {
		bad("report.heartbeat", "%v: must not be shorter than report.interval (%v)", hb, s.interval)
	}
	minIv := r.MinInterval
	if minIv == 0 {
		minIv = s.interval
	}
	switch {
	case minIv < 0:
		bad("report.min_interval", "%v: must not be negative", minIv)
	case minIv > hb:
		bad("report.min_interval", "%v: must not be longer than report.heartbeat (%v)", minIv, hb)
	}
	mc := r.MinChange
	if mc == "" {
		mc = "1%"
	}
	th, err := parseThreshold(mc)
	if err != nil {
		bad("report.min_change", "%v", err)
	}
	s.damping = damping{minChange: th, heartbeat: hb, minInterval: minIv}
	s.prefix = r.Prefix
	if s.prefix == "" {
		s.prefix = health.DefaultLoadPrefix
	} else if strings.HasPrefix(s.prefix, "/") || strings.HasSuffix(s.prefix, "/") || strings.Contains(s.prefix, "//") {
		bad("report.prefix", "%q: no leading, trailing or double '/'", s.prefix)
	}

	if h := ct.HTTP; h != nil {
		cp := *h
		u, err := url.Parse(h.URL)
		switch {
		case h.URL == "":
			bad("count.http.url", "required")
		case err != nil:
			bad("count.http.url", "%v", err)
		case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
			bad("count.http.url", "%q: want http://host[:port]/path or https://...", h.URL)
		}
		if h.Timeout < 0 {
			bad("count.http.timeout", "%v: must not be negative", h.Timeout)
		}
		if cp.Timeout == 0 {
			cp.Timeout = min(s.interval, 5*time.Second)
		}
		if h.AcceptedMetric != "" && h.Metric == "" {
			bad("count.http.accepted_metric", "needs count.http.metric (a plain-number body has no room for it)")
		}
		validMetricName(bad, "count.http.metric", h.Metric)
		validMetricName(bad, "count.http.accepted_metric", h.AcceptedMetric)
		s.httpSrc = &cp
	}
	if f := ct.File; f != nil {
		if f.Path == "" {
			bad("count.file.path", "required")
		}
		if f.AcceptedMetric != "" && f.Metric == "" {
			bad("count.file.accepted_metric", "needs count.file.metric (a plain-number file has no room for it)")
		}
		validMetricName(bad, "count.file.metric", f.Metric)
		validMetricName(bad, "count.file.accepted_metric", f.AcceptedMetric)
		cp := *f
		s.fileSrc = &cp
	}

	// drain
	s.grace = defaultGrace
	if c.Drain.Grace != nil {
		s.grace = *c.Drain.Grace
		if s.grace < 0 {
			bad("drain.grace", "%v: must not be negative", s.grace)
		}
	}
	s.drainUntil = c.Drain.Until
	if s.drainUntil < 0 {
		bad("drain.until", "%d: must not be negative", s.drainUntil)
	}

	// http
	switch l := c.HTTP.Listen; l {
	case "":
		s.listen = defaultListen
	case "off":
	default:
		if _, port, err := net.SplitHostPort(l); err != nil {
			bad("http.listen", "%q: want host:port or \"off\": %v", l, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			bad("http.listen", "%q: bad port", l)
		}
		s.listen = l
	}
	s.httpIdle = adminhttp.IdleTimeout
	if c.HTTP.TokenFile != "" {
		tok, err := adminhttp.ReadToken(c.HTTP.TokenFile)
		if err != nil {
			bad("http.token_file", "%v", err)
		}
		s.httpToken = tok
	}

	// log
	if err := s.logLevel.UnmarshalText([]byte(orDefault(c.Log.Level, "info"))); err != nil {
		bad("log.level", "%q: want debug, info, warn or error", c.Log.Level)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

func (c *Config) validateCheck(s *settings, bad func(key, format string, args ...any)) {
	ck := c.Service.Check
	typ := orDefault(ck.Type, "ttl")
	reap := consulMinReap
	if ck.DeregisterAfter != nil {
		reap = *ck.DeregisterAfter
		if reap != 0 && reap < consulMinReap {
			bad("service.check.deregister_after", "%v: Consul's minimum is %v (0s: never)", reap, consulMinReap)
		}
	}
	switch typ {
	case "ttl":
		s.ttl = orDefault(ck.TTL, defaultTTL)
		if s.ttl < time.Second {
			bad("service.check.ttl", "%v: at least 1s", s.ttl)
		}
		s.check = health.Check{TTL: s.ttl, DeregisterAfter: reap}
	case "tcp":
		addr := ck.TCP
		if addr == "" {
			addr = net.JoinHostPort(orDefault(c.Service.Address, "127.0.0.1"), strconv.Itoa(c.Service.Port))
		} else if _, _, err := net.SplitHostPort(addr); err != nil {
			bad("service.check.tcp", "%q: want host:port: %v", addr, err)
		}
		s.check = health.Check{
			TCP: addr, Interval: orDefault(ck.Interval, 5*time.Second),
			Timeout: orDefault(ck.Timeout, 2*time.Second), DeregisterAfter: reap,
		}
		if s.check.Interval < time.Second {
			bad("service.check.interval", "%v: at least 1s", s.check.Interval)
		}
		if s.check.Timeout <= 0 || s.check.Timeout > s.check.Interval {
			bad("service.check.timeout", "%v: want more than 0 and at most service.check.interval", s.check.Timeout)
		}
	case "none":
	default:
		bad("service.check.type", "%q: want ttl, tcp or none", typ)
	}
	for _, f := range []struct {
		key string
		set bool
	}{
		{"service.check.ttl", ck.TTL != 0 && typ != "ttl"},
		{"service.check.tcp", ck.TCP != "" && typ != "tcp"},
		{"service.check.interval", ck.Interval != 0 && typ != "tcp"},
		{"service.check.timeout", ck.Timeout != 0 && typ != "tcp"},
	} {
		if f.set {
			bad(f.key, "does not apply to check type %q", typ)
		}
	}
	if !c.Service.Register && ck != (CheckConfig{}) {
		bad("service.check", "only applies when service.register is true")
	}
}

var metricNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)

func validMetricName(bad func(key, format string, args ...any), key, name string) {
	if name != "" && !metricNameRE.MatchString(name) {
		bad(key, "%q: not a Prometheus metric name", name)
	}
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(strings.TrimSuffix(h, "."), ".") {
		if !serviceNameRE.MatchString(l) {
			return false
		}
	}
	return true
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// parseThreshold reads report.min_change: "N%" (relative to the last written
// count) or a plain non-negative number of connections.
func parseThreshold(s string) (threshold, error) {
	if p, ok := strings.CutSuffix(strings.TrimSpace(s), "%"); ok {
		f, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || math.IsNaN(f) || f < 0 || f > 100 {
			return threshold{}, fmt.Errorf("%q: want a percentage from 0%% to 100%%", s)
		}
		return threshold{percent: f, relative: true}, nil
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n < 0 {
		return threshold{}, fmt.Errorf("%q: want a percentage like 1%% or a non-negative whole number of connections", s)
	}
	return threshold{absolute: n}, nil
}

// explainYAML rewrites yaml.v3 errors, which give only line numbers, so that
// each names the key path it is about.
func explainYAML(src []byte, err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("yaml: %w", err)
	}
	var root yaml.Node
	_ = yaml.Unmarshal(src, &root)
	lineRE := regexp.MustCompile(`^line (\d+): (.*)$`)
	fieldRE := regexp.MustCompile(`^field (\S+) not found in type`)
	var errs []error
	for _, e := range te.Errors {
		m := lineRE.FindStringSubmatch(e)
		if m == nil {
			errs = append(errs, errors.New(e))
			continue
		}
		line, _ := strconv.Atoi(m[1])
		key := keyAtLine(&root, line)
		if key == "" {
			key = "line " + m[1]
		} else {
			key += " (line " + m[1] + ")"
		}
		msg := m[2]
		if fm := fieldRE.FindStringSubmatch(msg); fm != nil {
			msg = "unknown key"
		} else if strings.HasSuffix(msg, "into time.Duration") {
			msg += " (want a duration like 500ms or 10s)"
		}
		errs = append(errs, fmt.Errorf("%s: %s", key, msg))
	}
	return errors.Join(errs...)
}

// keyAtLine returns the dotted path (with [i] for list items) of the deepest
// key or list item that starts on line.
func keyAtLine(n *yaml.Node, line int) string {
	var best string
	var walk func(n *yaml.Node, path string)
	walk = func(n *yaml.Node, path string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, path)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := k.Value
				if path != "" {
					p = path + "." + k.Value
				}
				if k.Line == line {
					best = p
				}
				walk(v, p)
			}
		case yaml.SequenceNode:
			// Items of a flow list ([a, b]) share a line; the error
			// does not say which one, so name the list.
			onLine := 0
			for _, c := range n.Content {
				if c.Line == line && c.Kind == yaml.ScalarNode {
					onLine++
				}
			}
			for i, c := range n.Content {
				p := fmt.Sprintf("%s[%d]", path, i)
				if c.Line == line && c.Kind == yaml.ScalarNode && onLine == 1 {
					best = p
				}
				walk(c, p)
			}
		}
	}
	walk(n, "")
	return best
}
