package consultest

// What a test does when something real it needs from the machine is missing
// (a tool, the Consul binary, IPv6 loopback): outside CI it skips, and under
// CI=true it fails, so that a CI run never passes by not running what it was
// meant to run.

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI: the environment has CI=true.
func InCI() bool { return os.Getenv("CI") == "true" }

// Skipf skips the test with the formatted reason, or under CI=true fails it
// with that reason.
func Skipf(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("a skip is a failure in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}
