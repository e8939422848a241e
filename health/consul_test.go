package health

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// caPEM is a self-signed CA certificate, PEM-encoded.
func caPEM(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
}

func TestConsulConfigYAML(t *testing.T) {
	src := `
address: https://consul.example:8501
token_file: /etc/farmdns/consul.token
datacenter: dc2
tls:
  ca_file: /etc/ca.pem
  cert_file: /etc/c.pem
  key_file: /etc/k.pem
  server_name: consul.example
allow_stale: false
`
	var c ConsulConfig
	dec := yaml.NewDecoder(strings.NewReader(src))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatal(err)
	}
	want := ConsulConfig{
		Address: "https://consul.example:8501", TokenFile: "/etc/farmdns/consul.token", Datacenter: "dc2",
		TLS: ConsulTLS{CAFile: "/etc/ca.pem", CertFile: "/etc/c.pem", KeyFile: "/etc/k.pem", ServerName: "consul.example"},
	}
	if c.AllowStale == nil || *c.AllowStale || c.Stale() {
		t.Errorf("allow_stale: got %v, want explicit false", c.AllowStale)
	}
	c.AllowStale = nil
	if c != want {
		t.Errorf("decoded %+v, want %+v", c, want)
	}
	if !(ConsulConfig{}).Stale() {
		t.Error("allow_stale must default to true")
	}
	// The token itself must never be accepted in the YAML.
	dec = yaml.NewDecoder(strings.NewReader("token: secret\n"))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err == nil {
		t.Error("a token key in the YAML was accepted")
	}
}

func TestConsulConfigDefaults(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	t.Setenv("CONSUL_HTTP_TOKEN", "")
	t.Setenv("CONSUL_HTTP_TOKEN_FILE", "")
	cfg, err := ConsulConfig{}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address != "127.0.0.1:8500" || cfg.Scheme != "http" || cfg.Token != "" {
		t.Errorf("defaults: got address %q scheme %q token %q", cfg.Address, cfg.Scheme, cfg.Token)
	}

	t.Setenv("CONSUL_HTTP_ADDR", "10.0.0.1:8600")
	t.Setenv("CONSUL_HTTP_TOKEN", "from-env")
	cfg, err = ConsulConfig{}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address != "10.0.0.1:8600" || cfg.Token != "from-env" {
		t.Errorf("env: got address %q token %q", cfg.Address, cfg.Token)
	}

	// The configured address and token file win over the environment.
	tok := writeFile(t, "token", "  from-file\n")
	cfg, err = ConsulConfig{Address: "127.0.0.2:8500", TokenFile: tok}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Address != "127.0.0.2:8500" || cfg.Token != "from-file" {
		t.Errorf("explicit: got address %q token %q", cfg.Address, cfg.Token)
	}

	ca := writeFile(t, "ca.pem", caPEM(t))
	cfg, err = ConsulConfig{Address: "127.0.0.2:8501", TLS: ConsulTLS{CAFile: ca, ServerName: "consul"}}.APIConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Scheme != "https" || cfg.TLSConfig.CAFile != ca || cfg.TLSConfig.Address != "consul" {
		t.Errorf("tls: got scheme %q tls %+v", cfg.Scheme, cfg.TLSConfig)
	}
}

func TestConsulConfigValidate(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "")
	dir := t.TempDir()
	exists := writeFile(t, "exists.pem", "x")
	empty := writeFile(t, "empty.token", " \n")
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name string
		cfg  ConsulConfig
		want string // substring of the error; "" means valid
	}{
		{"zero", ConsulConfig{}, ""},
		{"https address", ConsulConfig{Address: "https://c:8501"}, ""},
		{"ipv6 address", ConsulConfig{Address: "[::1]:8500"}, ""},
		{"no port", ConsulConfig{Address: "consul.example"}, "consul.address: "},
		{"bad scheme", ConsulConfig{Address: "unix:///tmp/c.sock"}, "consul.address: "},
		{"token file missing", ConsulConfig{TokenFile: missing}, "consul.token_file: "},
		{"token file empty", ConsulConfig{TokenFile: empty}, "consul.token_file: "},
		{"cert without key", ConsulConfig{TLS: ConsulTLS{CertFile: exists}}, "consul.tls.cert_file: set without consul.tls.key_file"},
		{"key without cert", ConsulConfig{TLS: ConsulTLS{KeyFile: exists}}, "consul.tls.key_file: set without consul.tls.cert_file"},
		{"ca missing", ConsulConfig{TLS: ConsulTLS{CAFile: missing}}, "consul.tls.ca_file: "},
		{"cert missing", ConsulConfig{TLS: ConsulTLS{CertFile: missing, KeyFile: exists}}, "consul.tls.cert_file: "},
		{"key missing", ConsulConfig{TLS: ConsulTLS{CertFile: exists, KeyFile: missing}}, "consul.tls.key_file: "},
		{"ca not a certificate", ConsulConfig{TLS: ConsulTLS{CAFile: exists}}, "consul.tls: "},
		{"cert and key not a pair", ConsulConfig{TLS: ConsulTLS{CertFile: exists, KeyFile: exists}}, "consul.tls: "},
		{"ca", ConsulConfig{TLS: ConsulTLS{CAFile: writeFile(t, "ca.pem", caPEM(t))}}, ""},
		{"tls with http", ConsulConfig{Address: "http://c:8500", TLS: ConsulTLS{CAFile: exists}}, "consul.tls: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("no error, want one containing %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
			if tc.want != "" {
				if _, err := tc.cfg.Client(); err == nil {
					t.Error("Client() built a client from an invalid config")
				}
			}
		})
	}

	t.Setenv("CONSUL_HTTP_ADDR", "nonsense")
	if err := (ConsulConfig{}).Validate(); err == nil || !strings.Contains(err.Error(), "CONSUL_HTTP_ADDR") {
		t.Errorf("a bad CONSUL_HTTP_ADDR must be reported by name, got %v", err)
	}
}
