package zones

import (
	"strings"
	"testing"

	"github.com/miekg/dns"
)

func TestCanonicalName(t *testing.T) {
	long := strings.Repeat("a", 63)
	for in, want := range map[string]string{
		".":                       ".",
		"example.org":             "example.org.",
		"WWW.Example.ORG.":        "www.example.org.",
		`\097bc.example.`:         "abc.example.",
		`\065BC.example.`:         "abc.example.",
		`esc\046DOT.example.`:     `esc\.dot.example.`,
		`esc\.dot.example.`:       `esc\.dot.example.`,
		`sp\032ace.example.`:      `sp\ ace.example.`,
		`HI\200BIT.example.`:      `hi\200bit.example.`,
		"hi\xc8bit.example.":      `hi\200bit.example.`,
		"caf\u00e9.example.":      `caf\195\169.example.`,
		`back\\slash.example.`:    `back\\slash.example.`,
		`at@sign.example.`:        `at\@sign.example.`,
		`*.Wild.example.`:         "*.wild.example.",
		long + ".example.":        long + ".example.",
		strings.Repeat("a.", 127): strings.Repeat("a.", 127),
	} {
		got, ok := CanonicalName(in)
		if !ok || got != want {
			t.Errorf("CanonicalName(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "..", ".example.", "a..b.", long + "a.example.", strings.Repeat("a.", 128), `a\`} {
		if got, ok := CanonicalName(in); ok {
			t.Errorf("CanonicalName(%q) = %q, want not a name", in, got)
		}
	}
}

// FuzzCanonicalName checks the shortcut for plain names against the way
// every other name goes: through wire form and back.
func FuzzCanonicalName(f *testing.F) {
	for _, s := range []string{".", "a.b.", "A-b.C", `\097.`, "a..", strings.Repeat("x", 64), "@.", "*.x.", "\xc8."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if s == "" {
			return // no name, though dns.Fqdn makes it the root
		}
		got, ok := CanonicalName(s)
		var buf [256]byte
		n, err := dns.PackDomainName(dns.Fqdn(s), buf[:], 0, nil, false)
		if err != nil {
			if ok {
				t.Fatalf("%q: accepted as %q, but it does not pack: %v", s, got, err)
			}
			return
		}
		want, _, _ := dns.UnpackDomainName(buf[:n], 0)
		if !ok || got != dns.CanonicalName(want) {
			t.Fatalf("%q: %q, %v; want %q", s, got, ok, dns.CanonicalName(want))
		}
		if again, _ := CanonicalName(got); again != got {
			t.Fatalf("%q: not stable: %q then %q", s, got, again)
		}
	})
}
