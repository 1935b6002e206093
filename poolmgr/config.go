package poolmgr

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"time"
)

// PoolMode says when a server connection goes back to its pool.
type PoolMode string

// Pool modes.
const (
	// ModeSession holds a server connection for the whole client session and
	// resets it with DISCARD ALL on release.
	ModeSession PoolMode = "session"
	// ModeTransaction releases the server connection whenever ReadyForQuery
	// reports an idle transaction status.
	ModeTransaction PoolMode = "transaction"
)

// ServiceConfig sizes the pools of one service.
type ServiceConfig struct {
	MaxConnections int      `yaml:"max_connections"`
	MinConnections int      `yaml:"min_connections"`
	PoolMode       PoolMode `yaml:"pool_mode"`
	// Reads is replica (the default: proven reads go to replicas), primary
	// (never use replicas) or any (the primary competes for reads too).
	Reads string `yaml:"reads"`
	// TransactionTimeout ends transactions of this service open longer:
	// the running statement is cancelled and the transaction fails with
	// an error naming the limit (enforced by the proxy, for any
	// PostgreSQL version). 0: no limit.
	TransactionTimeout time.Duration `yaml:"transaction_timeout"`
	// IdleInTransactionTimeout disconnects a client of this service that
	// stays idle inside a transaction longer; its server connection is
	// rolled back and goes back to the pool. 0: no limit.
	IdleInTransactionTimeout time.Duration `yaml:"idle_in_transaction_timeout"`
	// MinOnDemand: the service's pools keep their minimum only once a
	// client of the service has used them. WithDefaults sets it for the
	// default services a configuration does not name, so services nobody
	// configured open no server connections until somebody uses them.
	MinOnDemand bool `yaml:"-"`
}

// ServerTLS configures TLS toward PostgreSQL.
type ServerTLS struct {
	// Mode is a libpq sslmode: disable, allow, prefer, require, verify-ca or
	// verify-full.
	Mode   string `yaml:"mode"`
	CAFile string `yaml:"ca_file"`
}

// DatabaseConfig describes one client-visible database and the servers
// behind it.
type DatabaseConfig struct {
	Primary   string    `yaml:"primary"`
	Replicas  []string  `yaml:"replicas"`
	DBName    string    `yaml:"dbname"`
	User      string    `yaml:"user"`
	Password  string    `yaml:"password"`
	ServerTLS ServerTLS `yaml:"server_tls"`
}

// Settings are the limits shared by all pools.
type Settings struct {
	ConnectTimeout      time.Duration `yaml:"connect_timeout"`
	IdleTimeout         time.Duration `yaml:"idle_timeout"`
	MaxLifetime         time.Duration `yaml:"max_lifetime"`
	HealthCheckInterval time.Duration `yaml:"health_check_interval"`
	WaitTimeout         time.Duration `yaml:"wait_timeout"`
	// BreakerFailures is the number of consecutive failed dials or checks
	// that opens a backend's circuit breaker.
	BreakerFailures int `yaml:"breaker_failures"`
	// BreakerTimeout is how long a breaker stays open before one probe may
	// try the backend again (half-open).
	BreakerTimeout time.Duration `yaml:"breaker_timeout"`
}

// Config is everything poolmgr needs.
type Config struct {
	Databases      map[string]DatabaseConfig `yaml:"databases"`
	Services       map[string]ServiceConfig  `yaml:"services"`
	DefaultService string                    `yaml:"default_service"`
	Pool           Settings                  `yaml:"pool"`
}

// Default service names and sizes, from the operations guide.
const (
	ServiceAPI             = "api"
	ServiceDataService     = "data-service"
	ServiceBackgroundJobs  = "background-jobs"
	ServiceAnalytics       = "analytics"
	ServiceBatchOperations = "batch-operations"
)

// DefaultServices returns the five services every deployment has unless the
// configuration overrides them.
func DefaultServices() map[string]ServiceConfig {
	return map[string]ServiceConfig{
		ServiceAPI:             {MaxConnections: 20, MinConnections: 5, PoolMode: ModeTransaction},
		ServiceDataService:     {MaxConnections: 15, MinConnections: 5, PoolMode: ModeTransaction},
		ServiceBackgroundJobs:  {MaxConnections: 10, MinConnections: 2, PoolMode: ModeTransaction},
		ServiceAnalytics:       {MaxConnections: 5, MinConnections: 2, PoolMode: ModeTransaction},
		ServiceBatchOperations: {MaxConnections: 8, MinConnections: 3, PoolMode: ModeTransaction},
	}
}

// DefaultSettings returns the pool limits of the operations guide.
func DefaultSettings() Settings {
	return Settings{
		ConnectTimeout:      5 * time.Second,
		IdleTimeout:         30 * time.Minute,
		MaxLifetime:         time.Hour,
		HealthCheckInterval: 60 * time.Second,
		WaitTimeout:         30 * time.Second,
		BreakerFailures:     5,
		BreakerTimeout:      5 * time.Second,
	}
}

// WithDefaults fills unset fields: the five default services (a configured
// service of the same name replaces its defaults field by field; a zero
// field counts as unset, and a min above a configured max is lowered to
// it), the default limits, and api as the default service.
func (c Config) WithDefaults() Config {
	out := c
	out.Services = DefaultServices()
	for name, svc := range out.Services {
		if _, named := c.Services[name]; !named {
			svc.MinOnDemand = true
			out.Services[name] = svc
		}
	}
	for name, svc := range c.Services {
		base, ok := out.Services[name]
		if !ok {
			base = ServiceConfig{MaxConnections: 10, PoolMode: ModeTransaction}
		}
		base.MinOnDemand = svc.MinOnDemand
		if svc.MaxConnections != 0 {
			base.MaxConnections = svc.MaxConnections
		}
		if svc.MinConnections != 0 {
			base.MinConnections = svc.MinConnections
		}
		if svc.PoolMode != "" {
			base.PoolMode = svc.PoolMode
		}
		if svc.Reads != "" {
			base.Reads = svc.Reads
		}
		if svc.TransactionTimeout != 0 {
			base.TransactionTimeout = svc.TransactionTimeout
		}
		if svc.IdleInTransactionTimeout != 0 {
			base.IdleInTransactionTimeout = svc.IdleInTransactionTimeout
		}
		// A smaller max than the default min shrinks the min with it.
		if svc.MinConnections == 0 && base.MinConnections > base.MaxConnections {
			base.MinConnections = base.MaxConnections
		}
		out.Services[name] = base
	}
	def := DefaultSettings()
	if out.Pool.ConnectTimeout == 0 {
		out.Pool.ConnectTimeout = def.ConnectTimeout
	}
	if out.Pool.IdleTimeout == 0 {
		out.Pool.IdleTimeout = def.IdleTimeout
	}
	if out.Pool.MaxLifetime == 0 {
		out.Pool.MaxLifetime = def.MaxLifetime
	}
	if out.Pool.HealthCheckInterval == 0 {
		out.Pool.HealthCheckInterval = def.HealthCheckInterval
	}
	if out.Pool.WaitTimeout == 0 {
		out.Pool.WaitTimeout = def.WaitTimeout
	}
	if out.Pool.BreakerFailures == 0 {
		out.Pool.BreakerFailures = def.BreakerFailures
	}
	if out.Pool.BreakerTimeout == 0 {
		out.Pool.BreakerTimeout = def.BreakerTimeout
	}
	if out.DefaultService == "" {
		out.DefaultService = ServiceAPI
	}
	dbs := make(map[string]DatabaseConfig, len(c.Databases))
	for name, db := range c.Databases {
		if db.DBName == "" {
			db.DBName = name
		}
		if db.ServerTLS.Mode == "" {
			db.ServerTLS.Mode = "prefer"
		}
		dbs[name] = db
	}
	out.Databases = dbs
	return out
}

// Validate reports every problem in c (after WithDefaults) at once.
func (c Config) Validate() error {
	var errs []error
	for _, name := range sortedKeys(c.Services) {
		svc := c.Services[name]
		if svc.MaxConnections < 1 {
			errs = append(errs, fmt.Errorf("services.%s.max_connections must be at least 1", name))
		}
		if svc.MinConnections < 0 || svc.MinConnections > svc.MaxConnections {
			errs = append(errs, fmt.Errorf("services.%s.min_connections must be between 0 and max_connections (%d)", name, svc.MaxConnections))
		}
		if svc.PoolMode != ModeSession && svc.PoolMode != ModeTransaction {
			errs = append(errs, fmt.Errorf("services.%s.pool_mode %q: want session or transaction", name, svc.PoolMode))
		}
		if svc.TransactionTimeout < 0 || svc.IdleInTransactionTimeout < 0 {
			errs = append(errs, fmt.Errorf("services.%s: transaction_timeout and idle_in_transaction_timeout must not be negative", name))
		}
		switch svc.Reads {
		case "", "primary", "replica", "any":
		default:
			errs = append(errs, fmt.Errorf("services.%s.reads %q: want primary, replica or any", name, svc.Reads))
		}
	}
	if _, ok := c.Services[c.DefaultService]; !ok {
		errs = append(errs, fmt.Errorf("default_service %q is not a configured service", c.DefaultService))
	}
	if len(c.Databases) == 0 {
		errs = append(errs, errors.New("databases: at least one database is required"))
	}
	for _, name := range sortedKeys(c.Databases) {
		db := c.Databases[name]
		for i, addr := range append([]string{db.Primary}, db.Replicas...) {
			field := "primary"
			if i > 0 {
				field = fmt.Sprintf("replicas[%d]", i-1)
			}
			if _, _, err := net.SplitHostPort(addr); err != nil {
				errs = append(errs, fmt.Errorf("databases.%s.%s %q: want host:port", name, field, addr))
			}
		}
		if db.User == "" {
			errs = append(errs, fmt.Errorf("databases.%s.user is required", name))
		}
		switch db.ServerTLS.Mode {
		case "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			errs = append(errs, fmt.Errorf("databases.%s.server_tls.mode %q: want disable, allow, prefer, require, verify-ca or verify-full", name, db.ServerTLS.Mode))
		}
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"connect_timeout", c.Pool.ConnectTimeout}, {"idle_timeout", c.Pool.IdleTimeout},
		{"max_lifetime", c.Pool.MaxLifetime}, {"health_check_interval", c.Pool.HealthCheckInterval},
		{"wait_timeout", c.Pool.WaitTimeout}, {"breaker_timeout", c.Pool.BreakerTimeout},
	} {
		if d.v <= 0 {
			errs = append(errs, fmt.Errorf("pool.%s must be positive", d.name))
		}
	}
	if c.Pool.BreakerFailures < 1 {
		errs = append(errs, errors.New("pool.breaker_failures must be at least 1"))
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
