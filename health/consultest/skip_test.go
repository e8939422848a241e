package consultest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestSkipf runs a test that calls Skipf in a child process, with and
// without CI=true, and reads its verdict.
func TestSkipf(t *testing.T) {
	if os.Getenv("CONSULTEST_SKIP_CHILD") == "1" {
		Skipf(t, "child %s", "skips")
		return
	}
	for _, tc := range []struct {
		ci   string
		fail bool
		want string
	}{
		{"", false, "--- SKIP: TestSkipf"},
		{"false", false, "--- SKIP: TestSkipf"},
		{"true", true, "a skip is a failure in CI: child skips"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestSkipf$", "-test.v")
		cmd.Env = append(os.Environ(), "CONSULTEST_SKIP_CHILD=1", "CI="+tc.ci)
		out, err := cmd.CombinedOutput()
		if failed := err != nil; failed != tc.fail {
			t.Errorf("CI=%q: failed %v, want %v:\n%s", tc.ci, failed, tc.fail, out)
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("CI=%q: output lacks %q:\n%s", tc.ci, tc.want, out)
		}
	}
}
