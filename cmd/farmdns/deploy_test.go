package main

// Tests for deploy/: the Prometheus rules and the Grafana dashboard use only the
// metrics farmdns promises (the contract below), the systemd units and Consul
// files are accepted by the real tools when they are installed, and the parent
// zone's delegation matches the zone farmdns serves.
//
// promtool (Debian package prometheus) is required in CI; systemd-analyze and
// Consul are used when present. Every name here starts with deploy, because
// others edit this package too.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/farmdns/farmdns/health"
	"github.com/farmdns/farmdns/health/consultest"
)

const deployDir = "../../deploy"

// deployMetric is one metric of the contract: its type and its own labels
// (job and instance are added by the scrape; le by a histogram's buckets).
type deployMetric struct {
	typ    string
	labels []string
}

// deployContract lists every metric farmdns and farmdns-agent export, as agreed
// with the code that implements them. Rules and dashboards may use these, and
// nothing else of farmdns; a live scrape that exports a farmdns metric not
// listed here fails checkMetricsContract.
var deployContract = map[string]deployMetric{
	"farmdns_dns_requests_total":           {"counter", []string{"zone", "proto", "qtype", "rcode"}},
	"farmdns_dns_request_duration_seconds": {"histogram", []string{"proto"}},
	"farmdns_dns_truncated_total":          {"counter", []string{"proto"}},
	"farmdns_dns_panics_total":             {"counter", nil},

	"farmdns_pool_answers_total":  {"counter", []string{"pool", "target"}},
	"farmdns_pool_targets":        {"gauge", []string{"pool", "state"}},
	"farmdns_pool_outcomes_total": {"counter", []string{"pool", "outcome"}},
	"farmdns_target_connections":  {"gauge", []string{"pool", "target"}},
	"farmdns_target_capacity":     {"gauge", []string{"pool", "target"}},

	"farmdns_consul_last_sync_timestamp_seconds":       {"gauge", []string{"dataset"}},
	"farmdns_consul_sync_errors_total":                 {"counter", []string{"dataset"}},
	"farmdns_consul_propagation_lag_seconds":           {"histogram", nil},
	"farmdns_consul_ready":                             {"gauge", nil},
	"farmdns_consul_malformed_values_total":            {"counter", nil},
	"farmdns_consul_snapshots_total":                   {"counter", nil},
	"farmdns_consul_state_restored":                    {"gauge", nil},
	"farmdns_consul_state_last_save_timestamp_seconds": {"gauge", nil},
	"farmdns_consul_state_save_errors_total":           {"counter", nil},
	"farmdns_consul_catalog_ready":                     {"gauge", nil},

	"farmdns_config_last_reload_successful":        {"gauge", nil},
	"farmdns_config_last_reload_timestamp_seconds": {"gauge", nil},

	"farmdns_rrl_responses_total":  {"counter", []string{"action"}},
	"farmdns_rrl_log_only_total":   {"counter", []string{"action"}},
	"farmdns_rrl_table_fill_ratio": {"gauge", nil},

	"farmdns_agent_connections":                    {"gauge", nil},
	"farmdns_agent_writes_total":                   {"counter", nil},
	"farmdns_agent_write_errors_total":             {"counter", nil},
	"farmdns_agent_last_success_timestamp_seconds": {"gauge", nil},
}

// deployConditional are contract metrics exported only with a setting on
// (named here); a live scrape without it need not show them.
var deployConditional = map[string]string{
	"farmdns_consul_state_last_save_timestamp_seconds": "consul.state_file",
	"farmdns_consul_state_save_errors_total":           "consul.state_file",
	"farmdns_consul_catalog_ready":                     "consul_dns",
}

// deployTargetLabels are added to every series by the scrape.
var deployTargetLabels = []string{"job", "instance"}

// deployPoolStates are the values of farmdns_pool_targets' state label.
var deployPoolStates = []string{"healthy", "warning", "draining", "critical", "stale"}

// deployLookupMetric resolves a series name to its contract entry, accepting
// the _bucket, _sum and _count series of a histogram. It returns the labels the
// series may carry.
func deployLookupMetric(name string) (labels []string, ok bool) {
	if m, ok := deployContract[name]; ok && m.typ != "histogram" {
		return append(slices.Clone(m.labels), deployTargetLabels...), true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, found := strings.CutSuffix(name, suffix)
		if m, ok := deployContract[base]; found && ok && m.typ == "histogram" {
			labels = append(slices.Clone(m.labels), deployTargetLabels...)
			if suffix == "_bucket" {
				labels = append(labels, "le")
			}
			return labels, true
		}
	}
	return nil, false
}

// deploySelector is a metric named in a PromQL expression, with its label matchers.
type deploySelector struct {
	name     string
	matchers []deployMatcher
}

type deployMatcher struct {
	label, op, value string
}

// deployPromKeywords are identifiers that are never metric names: binary
// operators, modifiers, and aggregations written before their grouping
// ("sum by (le) (...)").
var deployPromKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true, "stdvar": true,
	"count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true,
}

// deployPromGrouping are keywords followed by a list of label names.
var deployPromGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// deployPromSelectors finds the metric selectors of a PromQL expression. It is
// a lexer, not a parser (promtool does the real parsing where it is
// installed): it skips strings, comments, numbers, durations and Grafana
// variables, takes an identifier followed by "(" for a function, skips the
// label lists of by/without/on/ignoring/group_*, reads label matchers, and
// fails on an empty expression or unbalanced brackets.
func deployPromSelectors(expr string) ([]deploySelector, error) {
	if strings.TrimSpace(expr) == "" {
		return nil, errors.New("empty expression")
	}
	var (
		sels  []deploySelector
		depth int
		s     = expr
		i     = 0
	)
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			_, j, err := deployPromString(s, i)
			if err != nil {
				return nil, err
			}
			i = j
		case c == '{':
			// A selector without a name ({__name__="x"}) is not used here.
			if len(sels) == 0 || !deployPrevIsName(s, i) {
				return nil, fmt.Errorf("offset %d: label matchers without a metric name", i)
			}
			ms, j, err := deployPromMatchers(s, i+1)
			if err != nil {
				return nil, err
			}
			sels[len(sels)-1].matchers = ms
			i = j
		case c == '[':
			j := strings.IndexByte(s[i:], ']')
			if j < 0 {
				return nil, fmt.Errorf("offset %d: unclosed [", i)
			}
			i += j + 1
		case c == '(':
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return nil, fmt.Errorf("offset %d: unbalanced )", i)
			}
			i++
		case c == '}' || c == ']':
			return nil, fmt.Errorf("offset %d: unbalanced %c", i, c)
		case c == '$': // Grafana variable: $name or ${name...}
			i++
			if i < len(s) && s[i] == '{' {
				j := strings.IndexByte(s[i:], '}')
				if j < 0 {
					return nil, fmt.Errorf("offset %d: unclosed ${", i)
				}
				i += j + 1
			} else {
				for i < len(s) && deployIdentChar(s[i]) {
					i++
				}
			}
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			// Numbers, durations (5m, 1h30m), hex, exponents (1e+3).
			for i < len(s) && (deployIdentChar(s[i]) || s[i] == '.' ||
				(s[i] == '+' || s[i] == '-') && (s[i-1] == 'e' || s[i-1] == 'E')) {
				i++
			}
		case deployIdentChar(c):
			j := i
			for j < len(s) && (deployIdentChar(s[j]) || s[j] == ':') {
				j++
			}
			word := s[i:j]
			i = j
			for j < len(s) && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r') {
				j++
			}
			next := byte(0)
			if j < len(s) {
				next = s[j]
			}
			lower := strings.ToLower(word)
			switch {
			case deployPromGrouping[lower]:
				if next == '(' {
					k := strings.IndexByte(s[j:], ')')
					if k < 0 {
						return nil, fmt.Errorf("offset %d: unclosed label list after %s", j, word)
					}
					i = j + k + 1
				}
			case next == '(':
				// A function or an aggregation; the loop takes the "(".
			case deployPromKeywords[lower]:
			default:
				sels = append(sels, deploySelector{name: word})
			}
		default: // operators, commas, @
			i++
		}
	}
	if depth != 0 {
		return nil, errors.New("unbalanced (")
	}
	return sels, nil
}

func deployIdentChar(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// deployPrevIsName reports whether the text before s[i] ends in an identifier.
func deployPrevIsName(s string, i int) bool {
	return i > 0 && (deployIdentChar(s[i-1]) || s[i-1] == ':')
}

// deployPromString reads the quoted string at s[i]; it returns its contents
// (escapes kept) and the offset after it.
func deployPromString(s string, i int) (string, int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return s[i+1 : j], j + 1, nil
		}
	}
	return "", 0, fmt.Errorf("offset %d: unterminated string", i)
}

var deployMatcherRE = regexp.MustCompile(`^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*`)

// deployPromMatchers reads `label op "value", ...}` from s[i:]; it returns the
// matchers and the offset after the closing brace.
func deployPromMatchers(s string, i int) ([]deployMatcher, int, error) {
	var ms []deployMatcher
	for {
		for i < len(s) && (s[i] == ' ' || s[i] == ',' || s[i] == '\n' || s[i] == '\t') {
			i++
		}
		if i < len(s) && s[i] == '}' {
			return ms, i + 1, nil
		}
		m := deployMatcherRE.FindStringSubmatch(s[i:])
		if m == nil || i+len(m[0]) >= len(s) || !strings.ContainsRune("\"'`", rune(s[i+len(m[0])])) {
			return nil, 0, fmt.Errorf("offset %d: bad label matcher", i)
		}
		i += len(m[0])
		v, j, err := deployPromString(s, i)
		if err != nil {
			return nil, 0, err
		}
		ms = append(ms, deployMatcher{label: m[1], op: m[2], value: v})
		i = j
	}
}

// deployCheckSelectors checks that every selector names a contract metric (or
// one of extra, or one whose name prefix is in prefixes) and matches only its
// labels, with valid values for state and rcode. It returns the problems found.
func deployCheckSelectors(sels []deploySelector, extra map[string]bool, prefixes []string) []string {
	var problems []string
	for _, sel := range sels {
		labels, ok := deployLookupMetric(sel.name)
		if !ok {
			if extra[sel.name] || slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(sel.name, p) }) {
				continue
			}
			problems = append(problems, fmt.Sprintf("metric %s is not in the contract", sel.name))
			continue
		}
		for _, m := range sel.matchers {
			if !slices.Contains(labels, m.label) {
				problems = append(problems, fmt.Sprintf("%s has no label %s", sel.name, m.label))
				continue
			}
			if strings.Contains(m.value, "$") || m.op == "!=" || m.op == "!~" {
				continue // a Grafana variable, or a negation: any value is fine
			}
			for _, v := range strings.Split(m.value, "|") {
				switch {
				case m.label == "state" && !slices.Contains(deployPoolStates, v):
					problems = append(problems, fmt.Sprintf("%s: state %q is not one of %v", sel.name, v, deployPoolStates))
				case m.label == "rcode" && !deployIsRcode(v):
					problems = append(problems, fmt.Sprintf("%s: rcode %q is not an rcode name", sel.name, v))
				}
			}
		}
	}
	return problems
}

func deployIsRcode(s string) bool {
	for _, name := range dns.RcodeToString {
		if name == s {
			return true
		}
	}
	return false
}

func TestDeployPromSelectors(t *testing.T) {
	tests := []struct {
		expr string
		want string // "name{label op value,...} ..."; "error" for an error
	}{
		{`up`, `up`},
		{`sum by (le) (rate(farmdns_x_bucket{proto="udp"}[5m]))`, `farmdns_x_bucket{proto="udp"}`},
		{`sum(rate(a[$__rate_interval])) by (rcode) / ignoring(rcode) group_left sum(rate(b[5m]))`, `a b`},
		{`a / on (x) group_left (y) b offset 5m`, `a b`},
		{"time() - a > 300\n  or b == bool 0 # a comment naming c\n", `a b`},
		{`histogram_quantile(0.99, sum without (instance) (rate(a_bucket[1h30m]))) > 1e-3`, `a_bucket`},
		{`label_replace(a, "dst", "$1", "src", "(.*)}")`, `a`},
		{`a{pool=~"$pool", state!="x,}"} * 1.5`, `a{pool=~"$pool",state!="x,}"}`},
		{`rec:metric:rate5m{job="farmdns"}`, `rec:metric:rate5m{job="farmdns"}`},
		{`topk(10, time() - a)`, `a`},
		{``, `error`},
		{`sum(rate(a[5m])`, `error`},
		{`a{b="c"`, `error`},
		{`a{b=c}`, `error`},
		{`{__name__="a"}`, `error`},
		{`a[5m`, `error`},
		{`a{b="c}`, `error`},
	}
	for _, tt := range tests {
		sels, err := deployPromSelectors(tt.expr)
		var got string
		if err != nil {
			got = "error"
		} else {
			var parts []string
			for _, s := range sels {
				p := s.name
				if len(s.matchers) > 0 {
					var ms []string
					for _, m := range s.matchers {
						ms = append(ms, m.label+m.op+strconv.Quote(m.value))
					}
					p += "{" + strings.Join(ms, ",") + "}"
				}
				parts = append(parts, p)
			}
			got = strings.Join(parts, " ")
		}
		if got != tt.want {
			t.Errorf("%q: got %s, want %s (err %v)", tt.expr, got, tt.want, err)
		}
	}
	bad := deployCheckSelectors([]deploySelector{
		{name: "farmdns_pool_targets", matchers: []deployMatcher{{"state", "=~", "healthy|gone"}}},
		{name: "farmdns_dns_requests_total", matchers: []deployMatcher{{"code", "=", "x"}, {"rcode", "=", "SERVFAILED"}}},
		{name: "farmdns_dns_request_duration_seconds", matchers: nil}, // a histogram has no plain series
		{name: "farmdns_dns_request_duration_seconds_bucket", matchers: []deployMatcher{{"le", "=", "0.1"}, {"instance", "=~", "$instance"}}},
		{name: "go_goroutines"},
	}, nil, []string{"go_"})
	want := []string{
		`farmdns_pool_targets: state "gone" is not one of [healthy warning draining critical stale]`,
		`farmdns_dns_requests_total has no label code`,
		`farmdns_dns_requests_total: rcode "SERVFAILED" is not an rcode name`,
		`metric farmdns_dns_request_duration_seconds is not in the contract`,
	}
	if !slices.Equal(bad, want) {
		t.Errorf("deployCheckSelectors:\n got %q\nwant %q", bad, want)
	}
}

// requireTool returns the path of an external tool, or skips the test;
// with CI=true a missing tool fails it.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		consultest.Skipf(t, "%s is missing: %v", name, err)
	}
	return path
}

func deployRun(t *testing.T, dir, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// deployRules is the part of a Prometheus rules file the tests read.
type deployRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestDeployRulesPromtool checks the rules and runs their unit tests.
func TestDeployRulesPromtool(t *testing.T) {
	t.Parallel()
	promtool := requireTool(t, "promtool")
	dir := filepath.Join(deployDir, "prometheus")
	if out, err := deployRun(t, dir, promtool, "check", "rules", "farmdns.rules.yml"); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
	if out, err := deployRun(t, dir, promtool, "test", "rules", "farmdns.rules.test.yml"); err != nil {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// TestDeployRulesMetrics checks that the rules and their unit tests use only
// contract metrics and labels, and that the alerts operators rely on exist.
func TestDeployRulesMetrics(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(deployDir, "prometheus/farmdns.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules deployRules
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatal(err)
	}
	// Recorded series may be used by later rules; "up" is Prometheus's own
	// per-scrape series, there for the instance-down alert.
	known := map[string]bool{"up": true}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				if strings.Count(r.Record, ":") != 2 {
					t.Errorf("recording rule %s: want the level:metric:operations form", r.Record)
				}
				known[r.Record] = true
			}
		}
	}
	alerts := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			name := r.Record + r.Alert
			sels, err := deployPromSelectors(r.Expr)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if len(sels) == 0 {
				t.Errorf("%s: the expression names no metric", name)
			}
			for _, p := range deployCheckSelectors(sels, known, nil) {
				t.Errorf("%s: %s", name, p)
			}
			if r.Alert == "" {
				continue
			}
			alerts[r.Alert] = true
			if !slices.Contains([]string{"critical", "warning", "info"}, r.Labels["severity"]) {
				t.Errorf("alert %s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("alert %s has no summary", r.Alert)
			}
		}
	}
	for _, want := range []string{"FarmdnsNoHealthyTargets", "FarmdnsConsulStale", "FarmdnsReloadFailed",
		"FarmdnsHighServfailRate", "FarmdnsAgentWriteErrors"} {
		if !alerts[want] {
			t.Errorf("alert %s is missing", want)
		}
	}

	// The unit tests feed series by the same names the server exports.
	var unit struct {
		Tests []struct {
			InputSeries []struct {
				Series string `yaml:"series"`
			} `yaml:"input_series"`
			PromQLExprTest []struct {
				Expr string `yaml:"expr"`
			} `yaml:"promql_expr_test"`
		} `yaml:"tests"`
	}
	b, err = os.ReadFile(filepath.Join(deployDir, "prometheus/farmdns.rules.test.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &unit); err != nil {
		t.Fatal(err)
	}
	var exprs []string
	for _, tc := range unit.Tests {
		for _, s := range tc.InputSeries {
			exprs = append(exprs, s.Series)
		}
		for _, e := range tc.PromQLExprTest {
			exprs = append(exprs, e.Expr)
		}
	}
	if len(exprs) == 0 {
		t.Fatal("farmdns.rules.test.yml has no input series")
	}
	for _, e := range exprs {
		sels, err := deployPromSelectors(e)
		if err != nil {
			t.Errorf("rules test %q: %v", e, err)
		}
		for _, p := range deployCheckSelectors(sels, known, nil) {
			t.Errorf("rules test %q: %s", e, p)
		}
	}
}

// deployDashboard is the part of a Grafana dashboard the tests read.
type deployDashboard struct {
	Title         string          `json:"title"`
	UID           string          `json:"uid"`
	SchemaVersion int             `json:"schemaVersion"`
	Panels        []deployPanel   `json:"panels"`
	Templating    json.RawMessage `json:"templating"`
	Annotations   struct {
		List []struct {
			Datasource *deployDatasource `json:"datasource"`
			Expr       string            `json:"expr"`
		} `json:"list"`
	} `json:"annotations"`
}

type deployPanel struct {
	ID         int               `json:"id"`
	Type       string            `json:"type"`
	Title      string            `json:"title"`
	Datasource *deployDatasource `json:"datasource"`
	GridPos    *struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Datasource *deployDatasource `json:"datasource"`
		Expr       string            `json:"expr"`
		RefID      string            `json:"refId"`
	} `json:"targets"`
	Panels []deployPanel `json:"panels"` // a collapsed row's panels
}

type deployDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// deployDashboardExprs checks the dashboard's structure and returns every
// PromQL expression in it: panel targets, annotations, and the selectors of
// label_values() variable queries.
func deployDashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "grafana/farmdns.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d deployDashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatal(err)
	}
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q, uid %q: both are needed", d.Title, d.UID)
	}
	if len(d.UID) > 40 {
		t.Errorf("uid %q is longer than Grafana's 40 characters", d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want Grafana 10's (36 or later)", d.SchemaVersion)
	}
	if len(d.Panels) == 0 {
		t.Fatal("no panels")
	}

	// The data source is a variable, so the dashboard imports into any Grafana.
	var templating struct {
		List []struct {
			Name       string            `json:"name"`
			Type       string            `json:"type"`
			Query      json.RawMessage   `json:"query"`
			Datasource *deployDatasource `json:"datasource"`
		} `json:"list"`
	}
	if err := json.Unmarshal(d.Templating, &templating); err != nil {
		t.Fatalf("templating: %v", err)
	}
	var exprs []string
	vars := map[string]bool{}
	dsVar := ""
	for _, v := range templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("variable %s: query %s, want \"prometheus\"", v.Name, v.Query)
			}
			dsVar = "${" + v.Name + "}"
		case "query":
			var q struct {
				Query string `json:"query"`
			}
			if err := json.Unmarshal(v.Query, &q); err != nil {
				if err := json.Unmarshal(v.Query, &q.Query); err != nil {
					t.Errorf("variable %s: query %s", v.Name, v.Query)
				}
			}
			m := regexp.MustCompile(`^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %s: query %q is not label_values(selector, label)", v.Name, q.Query)
				continue
			}
			exprs = append(exprs, m[1])
			sels, err := deployPromSelectors(m[1])
			if err == nil && len(sels) == 1 {
				if labels, ok := deployLookupMetric(sels[0].name); ok && !slices.Contains(labels, m[2]) {
					t.Errorf("variable %s: %s has no label %s", v.Name, sels[0].name, m[2])
				}
			}
			if v.Datasource == nil || v.Datasource.UID != dsVar {
				t.Errorf("variable %s: data source %+v, want uid %s", v.Name, v.Datasource, dsVar)
			}
		}
	}
	if dsVar == "" {
		t.Fatal("no data source variable")
	}
	checkDS := func(where string, ds *deployDatasource) {
		if ds == nil || ds.Type != "prometheus" || ds.UID != dsVar {
			t.Errorf("%s: data source %+v, want prometheus %s", where, ds, dsVar)
		}
	}
	for i, a := range d.Annotations.List {
		if a.Expr != "" {
			checkDS(fmt.Sprintf("annotation %d", i), a.Datasource)
			exprs = append(exprs, a.Expr)
		}
	}

	ids := map[int]bool{}
	var walk func(panels []deployPanel)
	walk = func(panels []deployPanel) {
		for _, p := range panels {
			where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
			if p.Type == "" || p.Title == "" {
				t.Errorf("%s: type %q and title %q are both needed", where, p.Type, p.Title)
			}
			if ids[p.ID] || p.ID <= 0 {
				t.Errorf("%s: id missing or used twice", where)
			}
			ids[p.ID] = true
			if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
				t.Errorf("%s: gridPos %+v is not within Grafana's 24 columns", where, p.GridPos)
			}
			if p.Type == "row" { // rows hold panels, not queries
				walk(p.Panels)
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s: no targets", where)
			}
			checkDS(where, p.Datasource)
			refs := map[string]bool{}
			for _, tg := range p.Targets {
				checkDS(where+" target "+tg.RefID, tg.Datasource)
				if tg.RefID == "" || refs[tg.RefID] {
					t.Errorf("%s: refId %q missing or used twice", where, tg.RefID)
				}
				refs[tg.RefID] = true
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("%s target %s: empty expr", where, tg.RefID)
					continue
				}
				exprs = append(exprs, tg.Expr)
			}
		}
	}
	walk(d.Panels)

	for _, e := range exprs {
		sels, err := deployPromSelectors(e)
		if err != nil {
			t.Errorf("%q: %v", e, err)
			continue
		}
		if len(sels) == 0 {
			t.Errorf("%q names no metric", e)
		}
		for _, p := range deployCheckSelectors(sels, nil, []string{"go_", "process_"}) {
			t.Errorf("%q: %s", e, p)
		}
		for _, m := range regexp.MustCompile(`\$\{?([A-Za-z_][A-Za-z0-9_]*)`).FindAllStringSubmatch(e, -1) {
			if !vars[m[1]] && !strings.HasPrefix(m[1], "__") {
				t.Errorf("%q uses $%s, which is not a variable of the dashboard", e, m[1])
			}
		}
	}
	return exprs
}

// TestDeployDashboard checks the dashboard's structure and metrics, and, with
// promtool, parses every expression for real by checking them as recording rules.
func TestDeployDashboard(t *testing.T) {
	t.Parallel()
	exprs := deployDashboardExprs(t)
	if t.Failed() {
		return
	}
	promtool := requireTool(t, "promtool")
	// Grafana's variables become values PromQL accepts where they stand: an
	// interval inside [], a string inside a matcher.
	interval := regexp.MustCompile(`\$__(rate_interval|interval|range)\b`)
	variable := regexp.MustCompile(`\$\{?[A-Za-z_][A-Za-z0-9_]*\}?`)
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	type group struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	}
	var g group
	g.Name = "dashboard"
	for i, e := range exprs {
		e = variable.ReplaceAllString(interval.ReplaceAllString(e, "5m"), "x")
		g.Rules = append(g.Rules, rule{Record: fmt.Sprintf("dashboard:expr_%d:check", i), Expr: e})
	}
	b, err := yaml.Marshal(map[string][]group{"groups": {g}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := deployRun(t, ".", promtool, "check", "rules", path); err != nil {
		t.Errorf("the dashboard's expressions do not parse: %v\n%s", err, out)
	}
}

// deployUnit is a systemd unit file as section -> key -> values (a key may repeat).
type deployUnit map[string]map[string][]string

func deployReadUnit(t *testing.T, name string) deployUnit {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(deployDir, "systemd", name))
	if err != nil {
		t.Fatal(err)
	}
	u := deployUnit{}
	section := ""
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
		case line[0] == '[' && line[len(line)-1] == ']':
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not key=value in a section: %q", name, n+1, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

func (u deployUnit) last(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return "<unset>"
	}
	return vs[len(vs)-1]
}

// TestDeploySystemdUnits checks the hardening and wiring of both units, then
// has systemd-analyze verify them and rate their exposure when it is installed.
func TestDeploySystemdUnits(t *testing.T) {
	t.Parallel()
	server := deployReadUnit(t, "farmdns.service")
	agent := deployReadUnit(t, "farmdns-agent.service")
	common := map[string]string{
		"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
		"PrivateTmp": "yes", "PrivateDevices": "yes", "MemoryDenyWriteExecute": "yes", "LockPersonality": "yes",
		"RestrictNamespaces": "yes", "RestrictSUIDSGID": "yes", "SystemCallArchitectures": "native",
		"Restart": "on-failure",
	}
	for name, u := range map[string]deployUnit{"farmdns.service": server, "farmdns-agent.service": agent} {
		for k, want := range common {
			if got := u.last("Service", k); got != want {
				t.Errorf("%s: %s=%s, want %s", name, k, got, want)
			}
		}
		if got := u["Service"]["SystemCallFilter"]; len(got) == 0 || got[0] != "@system-service" {
			t.Errorf("%s: SystemCallFilter=%q, want @system-service first", name, got)
		}
		if got := u.last("Service", "ExecStartPre"); !strings.Contains(got, " -check -config /etc/farmdns/") {
			t.Errorf("%s: ExecStartPre=%s, want a -check of the config in /etc/farmdns", name, got)
		}
		if got := u.last("Install", "WantedBy"); got != "multi-user.target" {
			t.Errorf("%s: WantedBy=%s", name, got)
		}
	}
	for k, want := range map[string]string{
		"AmbientCapabilities":        "CAP_NET_BIND_SERVICE",
		"CapabilityBoundingSet":      "CAP_NET_BIND_SERVICE",
		"RestrictAddressFamilies":    "AF_INET AF_INET6 AF_UNIX",
		"ExecStart":                  "/usr/local/bin/farmdns -config /etc/farmdns/farmdns.yaml",
		"ConfigurationDirectory":     "farmdns",
		"SystemCallErrorNumber":      "EPERM",
		"LoadCredential":             "consul-token:/etc/farmdns/consul.token",
		"ProtectKernelTunables":      "yes",
		"ProtectControlGroups":       "yes",
		"ConfigurationDirectoryMode": "0755",
	} {
		if got := server.last("Service", k); got != want {
			t.Errorf("farmdns.service: %s=%s, want %s", k, got, want)
		}
	}
	if got := server["Service"]["ExecReload"]; len(got) == 0 || got[len(got)-1] != "/bin/kill -HUP $MAINPID" {
		t.Errorf("farmdns.service: ExecReload=%q, want the last to be /bin/kill -HUP $MAINPID", got)
	}
	for k, want := range map[string]string{
		"AmbientCapabilities":     "",
		"CapabilityBoundingSet":   "",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX AF_NETLINK",
		"ExecStart":               "/usr/local/bin/farmdns-agent -config /etc/farmdns/agent.yaml",
		"KillSignal":              "SIGTERM",
		"LoadCredential":          "consul-token:/etc/farmdns/agent.token",
		// farmdns-agent's exitDrainedOnRequest: a drain asked over HTTP
		// must not be undone by a restart that registers the node again.
		"RestartPreventExitStatus": "10",
	} {
		if got := agent.last("Service", k); got != want {
			t.Errorf("farmdns-agent.service: %s=%s, want %q", k, got, want)
		}
	}
	// /proc/net/tcp is the agent's fallback counter; ProcSubset=pid would hide it.
	if got := agent.last("Service", "ProcSubset"); got != "<unset>" {
		t.Errorf("farmdns-agent.service: ProcSubset=%s hides /proc/net", got)
	}

	// The example configs name the credentials the units hand over, and the
	// agent's drain fits in its stop timeout.
	var farm struct {
		Consul struct {
			TokenFile string `yaml:"token_file"`
		} `yaml:"consul"`
	}
	var agentCfg struct {
		Consul struct {
			TokenFile string `yaml:"token_file"`
		} `yaml:"consul"`
		Drain struct {
			Grace time.Duration `yaml:"grace"`
		} `yaml:"drain"`
	}
	for path, v := range map[string]any{"example/farmdns-farm.yaml": &farm, "example/agent.yaml": &agentCfg} {
		b, err := os.ReadFile(filepath.Join(deployDir, path))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	if want := "/run/credentials/farmdns.service/consul-token"; farm.Consul.TokenFile != want {
		t.Errorf("farmdns-farm.yaml: consul.token_file %q, want %q (farmdns.service's LoadCredential)", farm.Consul.TokenFile, want)
	}
	if want := "/run/credentials/farmdns-agent.service/consul-token"; agentCfg.Consul.TokenFile != want {
		t.Errorf("agent.yaml: consul.token_file %q, want %q (farmdns-agent.service's LoadCredential)", agentCfg.Consul.TokenFile, want)
	}
	stop, err := time.ParseDuration(agent.last("Service", "TimeoutStopSec"))
	if err != nil {
		t.Errorf("farmdns-agent.service: TimeoutStopSec: %v", err)
	} else if agentCfg.Drain.Grace <= 0 || stop < agentCfg.Drain.Grace+30*time.Second {
		t.Errorf("farmdns-agent.service: TimeoutStopSec=%v leaves too little beyond drain.grace %v", stop, agentCfg.Drain.Grace)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		consultest.Skipf(t, "systemd-analyze is missing (apt-get install systemd): %v", err)
	}
	// verify insists that the binaries exist: point the units at this test binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	binRE := regexp.MustCompile(`/usr/local/bin/farmdns(-agent)?\b`)
	var units []string
	for _, name := range []string{"farmdns.service", "farmdns-agent.service"} {
		b, err := os.ReadFile(filepath.Join(deployDir, "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, binRE.ReplaceAll(b, []byte(self)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, path)
	}
	// verify reports bad values as warnings and still exits 0: any output fails.
	out, err := deployRun(t, dir, analyze, append([]string{"verify", "--man=no"}, units...)...)
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	exposure := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`)
	for _, unit := range units {
		out, err := deployRun(t, dir, analyze, "security", "--offline=yes", "--no-pager", unit)
		m := exposure.FindStringSubmatch(out)
		if m == nil {
			t.Logf("systemd-analyze security --offline is not supported here (%v)", err)
			break
		}
		if level, _ := strconv.ParseFloat(m[1], 64); level > 2.0 {
			t.Errorf("%s: exposure %s, want at most 2.0 (systemd-analyze security)", filepath.Base(unit), m[1])
		}
	}
}

// deployServiceDef is a Consul agent service definition file.
type deployServiceDef struct {
	Service struct {
		Name  string            `json:"name"`
		ID    string            `json:"id"`
		Port  int               `json:"port"`
		Tags  []string          `json:"tags"`
		Meta  map[string]string `json:"meta"`
		Check struct {
			ID                             string `json:"id"`
			Name                           string `json:"name"`
			TCP                            string `json:"tcp"`
			HTTP                           string `json:"http"`
			Method                         string `json:"method"`
			Interval                       string `json:"interval"`
			Timeout                        string `json:"timeout"`
			DeregisterCriticalServiceAfter string `json:"deregister_critical_service_after"`
		} `json:"check"`
	} `json:"service"`
}

var deployPolicyFiles = []string{"farmdns-server.policy.hcl", "farmdns-agent.policy.hcl", "farmdns-agent-node1.policy.hcl"}

// TestDeployConsulFiles parses the service definitions and policies. With a
// Consul binary (FARMDNS_CONSUL, or the one .ci/consul.sh caches) it also has
// Consul validate the definitions, and runs a dev agent with ACLs to show that
// each policy grants what its user needs and no more.
func TestDeployConsulFiles(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(deployDir, "consul")
	defs := map[string]deployServiceDef{}
	for _, name := range []string{"ws-node.json", "ws-lb.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var def deployServiceDef
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&def); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		s := def.Service
		if s.Name == "" || s.ID == "" || s.Port == 0 || s.Meta["shard"] == "" ||
			(s.Check.TCP == "") == (s.Check.HTTP == "") || s.Check.Interval == "" {
			t.Errorf("%s: want name, id, port, meta shard, and one tcp or http check with an interval: %+v", name, s)
		}
		defs[name] = def
	}
	node, lb := defs["ws-node.json"].Service, defs["ws-lb.json"].Service
	if node.Name != "ws" || lb.Name != "ws-lb" || node.Meta["shard"] != lb.Meta["shard"] {
		t.Errorf("want services ws and ws-lb in one shard, got %s (shard %s) and %s (shard %s)",
			node.Name, node.Meta["shard"], lb.Name, lb.Meta["shard"])
	}
	if _, err := strconv.Atoi(node.Meta["capacity"]); node.Meta["capacity"] != "" && err != nil {
		t.Errorf("ws-node.json: meta capacity %q is not an integer", node.Meta["capacity"])
	}
	policies := map[string]string{}
	ruleRE := regexp.MustCompile(`(?m)^(agent|agent_prefix|key|key_prefix|node|node_prefix|service|service_prefix)\s+"[^"]*"\s*\{\s*policy\s*=\s*"(read|write|list|deny)"\s*\}`)
	for _, name := range deployPolicyFiles {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		text := string(b)
		// Every non-comment line belongs to a rule block of the form Consul documents.
		var code strings.Builder
		for _, line := range strings.Split(text, "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "#") {
				code.WriteString(line + "\n")
			}
		}
		rest := strings.TrimSpace(ruleRE.ReplaceAllString(code.String(), ""))
		if n := len(ruleRE.FindAllString(code.String(), -1)); n == 0 || rest != "" {
			t.Errorf("%s: %d rules, and text that is not a rule: %q", name, n, rest)
		}
		if strings.Contains(text, `"write"`) && strings.Contains(name, "server") {
			t.Errorf("%s: the server needs no write access", name)
		}
		policies[name] = text
	}

	bin := deployConsulBinary(t)
	data := filepath.Join(t.TempDir(), "data.json")
	if err := os.WriteFile(data, []byte(`{"data_dir": "`+filepath.Dir(data)+`"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := deployRun(t, dir, bin, "validate", data, "ws-node.json", "ws-lb.json"); err != nil {
		t.Errorf("consul validate: %v\n%s", err, out)
	}
	c := deployStartConsul(t, bin)
	c.checkPolicies(t, policies, defs)
}

// deployConsulBinary returns a Consul binary, or skips the test (fails in CI,
// where make test-deps builds it).
func deployConsulBinary(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("FARMDNS_CONSUL")
	if bin == "" {
		cache := os.Getenv("FARMDNS_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache/farmdns")
		}
		bin = filepath.Join(cache, "consul-1.20.6/consul")
	}
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		consultest.Skipf(t, "no Consul binary at %s (.ci/consul.sh builds it)", bin)
	}
	return bin
}

// deployConsul is a dev agent with ACLs on (default deny), node name node1.
type deployConsul struct {
	addr, root string
}

func deployStartConsul(t *testing.T, bin string) *deployConsul {
	t.Helper()
	for attempt := 1; ; attempt++ {
		ports := make([]int, 3)
		for i := range ports {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ports[i] = l.Addr().(*net.TCPAddr).Port
			l.Close()
		}
		c := &deployConsul{addr: "127.0.0.1:" + strconv.Itoa(ports[0]), root: "8a7c43e5-35de-4f02-9d7c-4f5d0c1a9a10"}
		// tokens.agent lets the agent keep its own node entry in sync, as a
		// production agent's token does; requests without a token stay denied.
		hcl := fmt.Sprintf(`ports { http = %d, server = %d, serf_lan = %d, serf_wan = -1, dns = -1, grpc = -1, grpc_tls = -1 }
acl { enabled = true, default_policy = "deny", tokens { initial_management = %q, agent = %q } }`,
			ports[0], ports[1], ports[2], c.root, c.root)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, bin, "agent", "-dev", "-node", "node1", "-bind", "127.0.0.1",
			"-client", "127.0.0.1", "-log-level", "warn", "-hcl", hcl)
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Start(); err != nil {
			cancel()
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); close(exited) }()
		stop := func() { cancel(); <-exited }
		err := c.waitReady(exited)
		if err == nil {
			t.Cleanup(stop)
			return c
		}
		stop()
		if attempt == 3 {
			t.Fatalf("consul dev agent: %v\n%s", err, log.String())
		}
		t.Logf("consul dev agent (attempt %d): %v; retrying on other ports", attempt, err)
	}
}

// waitReady waits until the agent has a leader and accepts its management token.
func (c *deployConsul) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return errors.New("exited")
		case <-time.After(50 * time.Millisecond):
		}
		if code, _ := c.do(c.root, "GET", "/v1/acl/token/self", ""); code == http.StatusOK {
			return nil
		}
	}
	return errors.New("not ready after 20s")
}

// do makes one API call and returns the status and body.
func (c *deployConsul) do(token, method, path, body string) (int, string) {
	req, err := http.NewRequest(method, "http://"+c.addr+path, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	req.Header.Set("X-Consul-Token", token)
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// token creates the policy from rules and a token holding only it.
func (c *deployConsul) token(t *testing.T, name, rules string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"Name": name, "Rules": rules})
	if code, out := c.do(c.root, "PUT", "/v1/acl/policy", string(body)); code != http.StatusOK {
		t.Fatalf("create policy %s: %d %s", name, code, out)
	}
	body, _ = json.Marshal(map[string]any{"Description": name, "Policies": []map[string]string{{"Name": name}}})
	code, out := c.do(c.root, "PUT", "/v1/acl/token", string(body))
	if code != http.StatusOK {
		t.Fatalf("create token for %s: %d %s", name, code, out)
	}
	var tok struct{ SecretID string }
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		t.Fatal(err)
	}
	return tok.SecretID
}

func (c *deployConsul) checkPolicies(t *testing.T, policies map[string]string, defs map[string]deployServiceDef) {
	server := c.token(t, "farmdns-server", policies["farmdns-server.policy.hcl"])
	shared := c.token(t, "farmdns-agent", policies["farmdns-agent.policy.hcl"])
	node1 := c.token(t, "farmdns-agent-node1", policies["farmdns-agent-node1.policy.hcl"])
	// The agent API takes the definition in its own spelling (ID, not id).
	register := func(token string, def deployServiceDef) (int, string) {
		s, ch := def.Service, def.Service.Check
		check := map[string]string{}
		for k, v := range map[string]string{
			"CheckID": ch.ID, "Name": ch.Name, "TCP": ch.TCP, "HTTP": ch.HTTP, "Method": ch.Method,
			"Interval": ch.Interval, "Timeout": ch.Timeout,
			"DeregisterCriticalServiceAfter": ch.DeregisterCriticalServiceAfter,
		} {
			if v != "" {
				check[k] = v
			}
		}
		b, _ := json.Marshal(map[string]any{
			"Name": s.Name, "ID": s.ID, "Port": s.Port, "Tags": s.Tags, "Meta": s.Meta, "Check": check,
		})
		return c.do(token, "PUT", "/v1/agent/service/register", string(b))
	}
	report := `{"connections": 1234, "accepted": 99120, "capacity": 20000, "updated": "2026-11-22T10:00:00Z"}`
	steps := []struct {
		what  string
		token string
		call  func(token string) (int, string)
		want  int
	}{
		{"agent node1 learns its node name", node1, func(tk string) (int, string) { return c.do(tk, "GET", "/v1/agent/self", "") }, 200},
		{"agent node1 registers ws-node1", node1, func(tk string) (int, string) { return register(tk, defs["ws-node.json"]) }, 200},
		{"agent node1 may not register an LB", node1, func(tk string) (int, string) { return register(tk, defs["ws-lb.json"]) }, 403},
		{"the LB is registered by its own means", c.root, func(tk string) (int, string) { return register(tk, defs["ws-lb.json"]) }, 200},
		{"agent node1 writes its load", node1, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/ws/node1/ws-node1", report)
		}, 200},
		{"agent node1 may not write node2's load", node1, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/ws/node2/ws-node2", report)
		}, 403},
		{"agent node1 may not write node10's load", node1, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/ws/node10/ws-node10", report)
		}, 403},
		{"agent node1 drains ws-node1", node1, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/agent/service/maintenance/ws-node1?enable=true&reason=drain", "")
		}, 200},
		{"agent node1 ends the drain", node1, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/agent/service/maintenance/ws-node1?enable=false", "")
		}, 200},
		{"the shared agent policy writes any ws node's load (the trade-off)", shared, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/ws/node2/ws-node2", report)
		}, 200},
		{"the shared agent policy may not write another service's loads", shared, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/wsx/node1/wsx-node1", report)
		}, 403},
		{"the shared agent policy reads its agent", shared, func(tk string) (int, string) { return c.do(tk, "GET", "/v1/agent/self", "") }, 200},
		{"something else in KV", c.root, func(tk string) (int, string) { return c.do(tk, "PUT", "/v1/kv/secret/x", "1") }, 200},
		{"farmdns reads the loads", server, func(tk string) (int, string) { return c.do(tk, "GET", "/v1/kv/farmdns/load/?recurse", "") }, 200},
		{"farmdns may not write loads", server, func(tk string) (int, string) {
			return c.do(tk, "PUT", "/v1/kv/farmdns/load/ws/node1/ws-node1", report)
		}, 403},
		{"farmdns may not read other keys", server, func(tk string) (int, string) { return c.do(tk, "GET", "/v1/kv/secret/x", "") }, 403},
		{"farmdns may not register services", server, func(tk string) (int, string) { return register(tk, defs["ws-node.json"]) }, 403},
	}
	for _, s := range steps {
		if code, out := s.call(s.token); code != s.want {
			t.Errorf("%s: status %d, want %d: %s", s.what, code, s.want, strings.TrimSpace(out))
		}
	}

	// farmdns sees both services with their shard, once the agent has synced
	// them to the catalog, and nothing it was not granted.
	for _, svc := range []string{"ws", "ws-lb"} {
		var entries []struct {
			Node    struct{ Node string }
			Service struct {
				ID   string
				Meta map[string]string
			}
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			code, out := c.do(server, "GET", "/v1/health/service/"+svc, "")
			if code != http.StatusOK {
				t.Fatalf("farmdns reads /v1/health/service/%s: %d %s", svc, code, out)
			}
			if err := json.Unmarshal([]byte(out), &entries); err != nil {
				t.Fatal(err)
			}
			if len(entries) > 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if len(entries) != 1 || entries[0].Node.Node != "node1" || entries[0].Service.Meta["shard"] != "a" {
			t.Errorf("farmdns's view of %s: %+v, want one instance on node1 in shard a", svc, entries)
		}
	}
	if code, out := c.do(c.root, "PUT", "/v1/agent/service/register", `{"Name": "billing", "Port": 9000}`); code != 200 {
		t.Fatalf("register billing: %d %s", code, out)
	}
	if code, out := c.do(server, "GET", "/v1/health/service/billing", ""); code != 200 || strings.TrimSpace(out) != "[]" {
		t.Errorf("farmdns sees a service it was not granted: %d %s", code, out)
	}
}

// TestDeployParentZone checks that the delegation the parent zone is told to
// add is valid zone text and matches the NS set and glue of the zone itself.
func TestDeployParentZone(t *testing.T) {
	t.Parallel()
	read := func(name, origin string) []dns.RR {
		t.Helper()
		f, err := os.Open(filepath.Join(deployDir, "example", name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zp := dns.NewZoneParser(f, origin, name)
		var rrs []dns.RR
		for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
			rrs = append(rrs, rr)
		}
		if err := zp.Err(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return rrs
	}
	delegation := func(rrs []dns.RR) (ns []string, glue map[string][]string) {
		glue = map[string][]string{}
		for _, rr := range rrs {
			switch rr := rr.(type) {
			case *dns.NS:
				if rr.Hdr.Name == "farm.example.com." {
					ns = append(ns, rr.Ns)
				}
			case *dns.A:
				glue[rr.Hdr.Name] = append(glue[rr.Hdr.Name], rr.A.String())
			case *dns.AAAA:
				glue[rr.Hdr.Name] = append(glue[rr.Hdr.Name], rr.AAAA.String())
			}
		}
		slices.Sort(ns)
		return ns, glue
	}
	parent := read("parent-zone.txt", "example.com.")
	for _, rr := range parent {
		if !dns.IsSubDomain("farm.example.com.", rr.Header().Name) {
			t.Errorf("parent-zone.txt: %s is not part of the delegation", rr)
		}
		if typ := rr.Header().Rrtype; typ != dns.TypeNS && typ != dns.TypeA && typ != dns.TypeAAAA {
			t.Errorf("parent-zone.txt: %s: only NS and glue belong there", rr)
		}
	}
	pNS, pGlue := delegation(parent)
	zNS, zGlue := delegation(read("farm.example.com.zone", "farm.example.com."))
	if len(pNS) < 2 || !slices.Equal(pNS, zNS) {
		t.Errorf("NS set: parent %v, zone %v: want the same two or more", pNS, zNS)
	}
	for _, ns := range pNS {
		if !dns.IsSubDomain("farm.example.com.", ns) {
			continue // out-of-zone name servers need no glue
		}
		if len(pGlue[ns]) == 0 || !slices.Equal(pGlue[ns], zGlue[ns]) {
			t.Errorf("glue for %s: parent %v, zone %v", ns, pGlue[ns], zGlue[ns])
		}
	}
}

// deployDescRE reads a metric's name and labels from prometheus.Desc.String.
var deployDescRE = regexp.MustCompile(`^Desc\{fqName: "([^"]*)", .*variableLabels: \{([^}]*)\}\}$`)

// TestDeployContractListsEveryMetric holds every farmdns metric the server can
// export, as its collectors describe them, to the contract: a live scrape
// shows only what the running configuration exports (no state file, no state
// file metrics), so a metric could otherwise be added undocumented.
func TestDeployContractListsEveryMetric(t *testing.T) {
	path := writeConfig(t, poolConfig("127.0.0.1:8500", "  state_file: consul-state\n", ""), goodZone)
	cfg, st, err := load(path)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	s := newServer(path, cfg, st, log)
	w, _, err := newWatcher(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	// Those newServer registers that export farmdns metrics; the watchers'
	// stand for watcherCollector and consulDNSCollector, which describe
	// nothing.
	descs := make(chan *prometheus.Desc, 100)
	go func() {
		for _, c := range []prometheus.Collector{s.handler.Collector(), s.handler.PoolCollector(), s.reloadOK, s.reloadTime, w.Collector(),
			health.NewCatalogWatcher(health.CatalogWatcherConfig{}, nil, log).Collector()} {
			c.Describe(descs)
		}
		close(descs)
	}()
	seen := 0
	for d := range descs {
		m := deployDescRE.FindStringSubmatch(d.String())
		if m == nil {
			t.Errorf("cannot read %s", d)
			continue
		}
		name, labels := m[1], strings.FieldsFunc(m[2], func(r rune) bool { return r == ',' })
		seen++
		want, ok := deployContract[name]
		if !ok {
			t.Errorf("%s: exported, but not in the contract (deployContract)", name)
			continue
		}
		for _, l := range labels {
			if !slices.Contains(want.labels, l) {
				t.Errorf("%s: label %q is not in the contract", name, l)
			}
		}
	}
	if seen < 10 {
		t.Errorf("only %d metrics described: the collectors above are not the server's", seen)
	}
}
