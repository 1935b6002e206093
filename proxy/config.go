package proxy

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/xdg-go/scram"

	"github.com/pgshield/pgshield/router"
)

// Auth methods for clients.
const (
	AuthSCRAM = "scram-sha-256"
	AuthMD5   = "md5"
	AuthTrust = "trust"
)

// TLS modes for clients.
const (
	TLSDisable = "disable"
	TLSPrefer  = "prefer"
	TLSRequire = "require"
)

// User is a client-facing login.
type User struct {
	Name string `yaml:"name"`
	// Password is the plain password, a SCRAM verifier
	// ("SCRAM-SHA-256$iterations:salt$StoredKey:ServerKey", as in
	// pg_authid) or an md5 hash ("md5" + hex(md5(password || user))).
	Password string `yaml:"password"`
	Service  string `yaml:"service"`
	// Admin lets the user log in on the admin console. An admin user
	// does not log in on the client port unless ClientLogin is set too:
	// console credentials give no access to the data by default.
	Admin       bool `yaml:"admin"`
	ClientLogin bool `yaml:"client_login"`
}

// TLSConfig is the client-facing TLS setup.
type TLSConfig struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Client is disable, prefer (default when a certificate is set) or
	// require.
	Client string `yaml:"client"`
}

// Config is the proxy's part of the configuration.
type Config struct {
	Listen               string        `yaml:"listen"`
	TLS                  TLSConfig     `yaml:"tls"`
	AuthType             string        `yaml:"auth_type"`
	Users                []User        `yaml:"users"`
	MaxClientConnections int           `yaml:"max_client_connections"`
	MaxMessageSize       int           `yaml:"max_message_size"`
	ClientLoginTimeout   time.Duration `yaml:"client_login_timeout"`
	ShutdownTimeout      time.Duration `yaml:"shutdown_timeout"`
	// MaxPreparedStatements bounds the statements prepared per server
	// connection in transaction mode; the least recently used are closed.
	MaxPreparedStatements int `yaml:"max_prepared_statements"`
	// MaxRetries is how often a statement that failed with a
	// serialization failure or deadlock outside a transaction block, before
	// any of its result reached the client, is run again (0: the default;
	// negative: never).
	MaxRetries int `yaml:"max_retries"`
	// LongTransactionThreshold: transactions open longer are counted as
	// long (pgshield_long_transactions) and flagged by the admin console.
	LongTransactionThreshold time.Duration `yaml:"long_transaction_threshold"`
	// ParseCacheSize is the number of distinct query texts whose
	// classification is cached.
	ParseCacheSize int `yaml:"parse_cache_size"`
	// DisableClassification turns SQL classification off (benchmarks
	// only): session state in transaction mode is then not tracked.
	DisableClassification bool `yaml:"disable_classification"`
	// DisableStats turns off per-statement statistics (timings, query
	// statistics, slow-query log); gauges and error counters stay. For
	// measuring what the statistics cost.
	DisableStats bool `yaml:"disable_stats"`
	// SlowQueryThreshold: statements running longer are logged (normalized)
	// and counted in database_slow_queries_total.
	SlowQueryThreshold time.Duration `yaml:"slow_query_threshold"`
	// QueryStatsSize bounds the statements (pg_query fingerprints) whose
	// statistics are kept; the least recently run are forgotten.
	QueryStatsSize int `yaml:"query_stats_size"`
	// DisableIdleParking keeps a goroutine and a read buffer for every
	// idle client (park.go): for measuring what parking saves.
	DisableIdleParking bool `yaml:"disable_idle_parking"`
}

// Defaults.
const (
	DefaultListen               = "127.0.0.1:6432"
	DefaultMaxClientConnections = 10000
	DefaultMaxMessageSize       = 64 << 20
	DefaultClientLoginTimeout   = 15 * time.Second
	DefaultShutdownTimeout      = 30 * time.Second
	DefaultMaxPrepared          = 250
	DefaultMaxRetries           = 3
	DefaultLongTransaction      = 30 * time.Second
	DefaultSlowQueryThreshold   = 500 * time.Millisecond
	DefaultQueryStatsSize       = 5000
	scramIterations             = 4096
)

// WithDefaults fills unset fields.
func (c Config) WithDefaults() Config {
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if c.AuthType == "" {
		c.AuthType = AuthSCRAM
	}
	if c.TLS.Client == "" {
		c.TLS.Client = TLSDisable
		if c.TLS.CertFile != "" {
			c.TLS.Client = TLSPrefer
		}
	}
	if c.MaxClientConnections == 0 {
		c.MaxClientConnections = DefaultMaxClientConnections
	}
	if c.MaxMessageSize == 0 {
		c.MaxMessageSize = DefaultMaxMessageSize
	}
	if c.ClientLoginTimeout == 0 {
		c.ClientLoginTimeout = DefaultClientLoginTimeout
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if c.MaxPreparedStatements == 0 {
		c.MaxPreparedStatements = DefaultMaxPrepared
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.LongTransactionThreshold == 0 {
		c.LongTransactionThreshold = DefaultLongTransaction
	}
	if c.SlowQueryThreshold == 0 {
		c.SlowQueryThreshold = DefaultSlowQueryThreshold
	}
	if c.QueryStatsSize == 0 {
		c.QueryStatsSize = DefaultQueryStatsSize
	}
	if c.ParseCacheSize <= 0 {
		c.ParseCacheSize = router.DefaultParseCacheSize
	}
	return c
}

// user is a User ready for authentication.
type user struct {
	User
	scram   *scram.StoredCredentials // nil when only an md5 hash is known
	md5Hash string                   // "md5..." or "" when only a SCRAM verifier is known
}

// runtime is an immutable, validated snapshot of Config, swapped whole on
// reload.
type runtime struct {
	cfg   Config
	users map[string]*user
	tls   *tls.Config // nil when TLS is off
}

// compile validates c (after WithDefaults) and precomputes what logins need.
// services lists the known service names, to check users against.
func compile(c Config, services map[string]bool) (*runtime, error) {
	var errs []error
	switch c.AuthType {
	case AuthSCRAM, AuthMD5, AuthTrust:
	default:
		errs = append(errs, fmt.Errorf("auth_type %q: want scram-sha-256, md5 or trust", c.AuthType))
	}
	rt := &runtime{cfg: c, users: make(map[string]*user, len(c.Users))}
	switch c.TLS.Client {
	case TLSDisable:
	case TLSPrefer, TLSRequire:
		if c.TLS.CertFile == "" || c.TLS.KeyFile == "" {
			errs = append(errs, fmt.Errorf("tls.client %q needs tls.cert_file and tls.key_file", c.TLS.Client))
			break
		}
		cert, err := tls.LoadX509KeyPair(c.TLS.CertFile, c.TLS.KeyFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("tls: %w", err))
			break
		}
		rt.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	default:
		errs = append(errs, fmt.Errorf("tls.client %q: want disable, prefer or require", c.TLS.Client))
	}
	for i, u := range c.Users {
		if u.Name == "" {
			errs = append(errs, fmt.Errorf("users[%d]: name is required", i))
			continue
		}
		if _, dup := rt.users[u.Name]; dup {
			errs = append(errs, fmt.Errorf("users[%d]: user %q appears twice", i, u.Name))
			continue
		}
		if u.Service != "" && services != nil && !services[u.Service] {
			errs = append(errs, fmt.Errorf("users[%d] (%s): unknown service %q", i, u.Name, u.Service))
		}
		cu, err := compileUser(u, c.AuthType)
		if err != nil {
			errs = append(errs, fmt.Errorf("users[%d] (%s): %w", i, u.Name, err))
			continue
		}
		rt.users[u.Name] = cu
	}
	if c.MaxClientConnections < 1 {
		errs = append(errs, errors.New("max_client_connections must be at least 1"))
	}
	if c.MaxPreparedStatements < 1 {
		errs = append(errs, errors.New("max_prepared_statements must be at least 1"))
	}
	if c.MaxMessageSize < 1<<10 {
		errs = append(errs, errors.New("max_message_size must be at least 1024 bytes"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return rt, nil
}

func compileUser(u User, authType string) (*user, error) {
	cu := &user{User: u}
	switch {
	case strings.HasPrefix(u.Password, "SCRAM-SHA-256$"):
		creds, err := parseSCRAMVerifier(u.Password)
		if err != nil {
			return nil, err
		}
		cu.scram = creds
		if authType == AuthMD5 {
			return nil, errors.New("a SCRAM verifier cannot be used with auth_type md5: give the plain password or an md5 hash")
		}
	case len(u.Password) == 35 && strings.HasPrefix(u.Password, "md5"):
		cu.md5Hash = u.Password
		if authType == AuthSCRAM {
			return nil, errors.New("an md5 hash cannot be used with auth_type scram-sha-256: give the plain password or a SCRAM verifier")
		}
	default:
		if u.Password == "" && authType != AuthTrust {
			return nil, errors.New("password is required")
		}
		cu.md5Hash = md5Hash(u.Password, u.Name)
		salt := make([]byte, 16)
		if _, err := rand.Read(salt); err != nil {
			return nil, err
		}
		client, err := scram.SHA256.NewClient(u.Name, u.Password, "")
		if err != nil {
			return nil, fmt.Errorf("password: %w", err)
		}
		creds, err := client.GetStoredCredentialsWithError(scram.KeyFactors{Salt: string(salt), Iters: scramIterations})
		if err != nil {
			return nil, err
		}
		cu.scram = &creds
	}
	return cu, nil
}

// parseSCRAMVerifier reads PostgreSQL's verifier format.
func parseSCRAMVerifier(v string) (*scram.StoredCredentials, error) {
	bad := errors.New("malformed SCRAM verifier: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	parts := strings.Split(strings.TrimPrefix(v, "SCRAM-SHA-256$"), "$")
	if len(parts) != 2 {
		return nil, bad
	}
	iterSalt := strings.SplitN(parts[0], ":", 2)
	keys := strings.SplitN(parts[1], ":", 2)
	if len(iterSalt) != 2 || len(keys) != 2 {
		return nil, bad
	}
	iters, err := strconv.Atoi(iterSalt[0])
	if err != nil || iters < 1 {
		return nil, bad
	}
	salt, err1 := base64.StdEncoding.DecodeString(iterSalt[1])
	stored, err2 := base64.StdEncoding.DecodeString(keys[0])
	server, err3 := base64.StdEncoding.DecodeString(keys[1])
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != 32 || len(server) != 32 {
		return nil, bad
	}
	return &scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored, ServerKey: server,
	}, nil
}

// ValidateConfig checks cfg (after WithDefaults) against the known service
// names without changing anything.
func ValidateConfig(cfg Config, services []string) error {
	known := make(map[string]bool, len(services))
	for _, s := range services {
		known[s] = true
	}
	_, err := compile(cfg.WithDefaults(), known)
	return err
}
