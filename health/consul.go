package health

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/hashicorp/consul/api"
)

// ConsulConfig is the `consul:` section of the farmdns configuration: how to
// reach the Consul HTTP API. The ACL token is never part of it; it comes from
// TokenFile or, when that is empty, from the CONSUL_HTTP_TOKEN environment variable.
type ConsulConfig struct {
	// Address is host:port, optionally prefixed by http:// or https://.
	// Empty means CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `yaml:"address"`
	// TokenFile names a file holding the ACL token (surrounding space trimmed).
	TokenFile string `yaml:"token_file"`
	// Datacenter to query; empty means the agent's own.
	Datacenter string `yaml:"datacenter"`
	// TLS configures HTTPS. Any TLS setting switches the scheme to https.
	TLS ConsulTLS `yaml:"tls"`
	// AllowStale lets any Consul server answer reads, not only the leader, so
	// read load spreads across the cluster. Nil means true.
	AllowStale *bool `yaml:"allow_stale"`
}

// ConsulTLS is the `consul.tls:` section.
type ConsulTLS struct {
	// CAFile verifies the Consul server certificate; empty means the system roots.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are a client certificate, both or neither.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the private key of CertFile.
	KeyFile string `yaml:"key_file"`
	// ServerName overrides the name checked in the server certificate.
	ServerName string `yaml:"server_name"`
}

const defaultConsulAddress = "127.0.0.1:8500"

// Stale reports whether reads may be answered by any server (AllowStale, default true).
func (c ConsulConfig) Stale() bool {
	return c.AllowStale == nil || *c.AllowStale
}

// Validate checks the configuration without contacting Consul. Its messages
// name the offending key.
func (c ConsulConfig) Validate() error {
	var errs []error
	if err := validAddress(c.address()); err != nil {
		key := "consul.address"
		if c.Address == "" {
			key = "consul.address (from " + api.HTTPAddrEnvName + ")"
		}
		errs = append(errs, fmt.Errorf("%s: %w", key, err))
	}
	if c.TokenFile != "" {
		if _, err := readToken(c.TokenFile); err != nil {
			errs = append(errs, fmt.Errorf("consul.token_file: %w", err))
		}
	}
	t := c.TLS
	switch {
	case t.CertFile != "" && t.KeyFile == "":
		errs = append(errs, errors.New("consul.tls.cert_file: set without consul.tls.key_file"))
	case t.KeyFile != "" && t.CertFile == "":
		errs = append(errs, errors.New("consul.tls.key_file: set without consul.tls.cert_file"))
	}
	for _, f := range []struct{ key, path string }{
		{"consul.tls.ca_file", t.CAFile},
		{"consul.tls.cert_file", t.CertFile},
		{"consul.tls.key_file", t.KeyFile},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.key, err))
		}
	}
	if strings.HasPrefix(c.address(), "http://") && t != (ConsulTLS{}) {
		errs = append(errs, errors.New("consul.tls: set but consul.address asks for plain http://"))
	}
	if len(errs) == 0 && t != (ConsulTLS{}) {
		// Files that exist may still hold no certificate: load them as the
		// client will, so that a bad one fails the config, not the watcher.
		if _, err := api.SetupTLSConfig(c.apiTLS()); err != nil {
			errs = append(errs, fmt.Errorf("consul.tls: %w", err))
		}
	}
	return errors.Join(errs...)
}

// APIConfig returns the Consul client configuration described by c, reading
// the token file. Callers that need their own HTTP transport (tests that count
// bytes, say) can adjust the result before calling api.NewClient.
func (c ConsulConfig) APIConfig() (*api.Config, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cfg := &api.Config{
		Address:    c.address(),
		Scheme:     "http",
		Datacenter: c.Datacenter,
		TLSConfig:  *c.apiTLS(),
	}
	if c.TLS != (ConsulTLS{}) {
		cfg.Scheme = "https"
	}
	if c.TokenFile != "" {
		tok, err := readToken(c.TokenFile)
		if err != nil {
			return nil, fmt.Errorf("consul.token_file: %w", err)
		}
		cfg.Token = tok
	} else {
		cfg.Token = os.Getenv(api.HTTPTokenEnvName)
	}
	return cfg, nil
}

// Client builds a Consul API client. It does not contact Consul.
func (c ConsulConfig) Client() (*api.Client, error) {
	cfg, err := c.APIConfig()
	if err != nil {
		return nil, err
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("consul client: %w", err)
	}
	return client, nil
}

func (c ConsulConfig) apiTLS() *api.TLSConfig {
	return &api.TLSConfig{
		Address:  c.TLS.ServerName,
		CAFile:   c.TLS.CAFile,
		CertFile: c.TLS.CertFile,
		KeyFile:  c.TLS.KeyFile,
	}
}

func (c ConsulConfig) address() string {
	if c.Address != "" {
		return c.Address
	}
	if a := os.Getenv(api.HTTPAddrEnvName); a != "" {
		return a
	}
	return defaultConsulAddress
}

func validAddress(a string) error {
	hostport := a
	if scheme, rest, ok := strings.Cut(a, "://"); ok {
		if scheme != "http" && scheme != "https" {
			return fmt.Errorf("%q: scheme must be http or https", a)
		}
		hostport = rest
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return fmt.Errorf("%q: want host:port: %w", a, err)
	}
	if host == "" || port == "" {
		return fmt.Errorf("%q: want host:port", a)
	}
	return nil
}

func readToken(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s: file is empty", path)
	}
	return tok, nil
}
