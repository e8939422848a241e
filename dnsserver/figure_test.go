package dnsserver

import (
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"

	"github.com/farmdns/farmdns/health/consultest"
)

// TestFigureCPUPerQueryAgainstKnot checks, on every run, a loose bound for
// the figure README's performance section quotes from `make bench`: Knot's
// CPU per query over farmdns's at 50,000 queries a second, one core each
// (1.03 measured). A short run of the same script, .ci/dnsperf.sh, at that
// one rate must show at least 0.5.
func TestFigureCPUPerQueryAgainstKnot(t *testing.T) {
	if testing.Short() {
		t.Skip("builds farmdns and runs dnsperf against Knot")
	}
	for _, tool := range []string{"dnsperf", "knotd", "taskset", "dig", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			consultest.Skipf(t, "%s is missing (make test-deps installs it)", tool)
		}
	}
	cmd := exec.Command("bash", "../.ci/dnsperf.sh", "3", "1")
	cmd.Env = append(os.Environ(), "RATES=50000", "SATURATION=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf(".ci/dnsperf.sh: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	m := regexp.MustCompile(`\| at 50000 qps \|[^|]*\|[^|]*\| ([0-9.]+) \|`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no knot/farmdns ratio at 50000 qps in the output")
	}
	ratio, _ := strconv.ParseFloat(string(m[1]), 64)
	if ratio < 0.5 {
		t.Errorf("knot/farmdns CPU per query %.2f at 50,000 qps; bound 0.5 (README: 1.03)", ratio)
	}
}
