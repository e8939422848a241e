package zones

import (
	"strings"

	"github.com/miekg/dns"
)

// CanonicalName returns the one spelling by which zones keys a domain name:
// the name in wire form with its ASCII letters lowered, written back in
// presentation form as miekg/dns unpacks it. Every way of writing a name
// then gives the same key: `\097bc`, `ABC` and `abc` are one name,
// `esc\.dot` and `esc\046dot` are one label, and `\200` stays that byte,
// since RFC 4343 folds the case of A to Z only. A question unpacked from the
// wire is already spelled this way but for case. ok is false when s is not a
// domain name.
//
// The key is a presentation name rather than wire bytes so that the label
// walks, subdomain tests and messages keep using miekg/dns's helpers, and a
// name of plain letters, digits and hyphens costs one scan.
func CanonicalName(s string) (name string, ok bool) {
	if s == "" {
		return "", false // dns.Fqdn would make it the root
	}
	if plain, upper := isPlain(s); plain {
		s = dns.Fqdn(s)
		if upper {
			s = lowerASCII(s)
		}
		return s, true
	}
	var buf [256]byte
	n, err := dns.PackDomainName(dns.Fqdn(s), buf[:], 0, nil, false)
	if err != nil {
		return "", false
	}
	// Label lengths are at most 63, below 'A', so only letters change.
	for i, b := range buf[:n] {
		if 'A' <= b && b <= 'Z' {
			buf[i] = b + 'a' - 'A'
		}
	}
	name, _, err = dns.UnpackDomainName(buf[:n], 0)
	return name, err == nil
}

// isPlain reports whether s is a domain name whose presentation form needs
// no escapes and whose labels and length are within bounds, so that lowering
// its letters is all CanonicalName has to do; and whether it has upper-case
// letters.
func isPlain(s string) (plain, upper bool) {
	if s == "." {
		return true, false
	}
	if s == "" || len(s) > 254 || s[0] == '.' {
		return false, false
	}
	label := 0
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b == '.':
			if label == 0 {
				return false, false // an empty label
			}
			label = 0
			continue
		case b <= ' ' || b > '~' || strings.IndexByte(`'()";@\`, b) >= 0:
			return false, false // written with an escape by UnpackDomainName
		case 'A' <= b && b <= 'Z':
			upper = true
		}
		if label++; label > 63 {
			return false, false
		}
	}
	// Without the final dot the wire form is one octet longer.
	if s[len(s)-1] != '.' && len(s) > 253 {
		return false, false
	}
	return true, upper
}

func lowerASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
