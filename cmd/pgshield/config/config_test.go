package config

import (
	"strings"
	"testing"
	"time"

	"github.com/pgshield/pgshield/poolmgr"
)

const minimal = `
users:
  - {name: app, password: secret, service: api}
databases:
  leads: {primary: 127.0.0.1:5432, user: postgres, password: pw}
`

func TestDefaultsFromTheOperationsGuide(t *testing.T) {
	f, err := Parse([]byte(minimal))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]int{"api": {20, 5}, "data-service": {15, 5}, "background-jobs": {10, 2}, "analytics": {5, 2}, "batch-operations": {8, 3}}
	for name, mm := range want {
		s := f.Pools.Services[name]
		if s.MaxConnections != mm[0] || s.MinConnections != mm[1] || s.PoolMode != poolmgr.ModeTransaction {
			t.Errorf("%s: got %+v", name, s)
		}
	}
	p := f.Pools.Pool
	if p.ConnectTimeout != 5*time.Second || p.IdleTimeout != 30*time.Minute || p.HealthCheckInterval != time.Minute {
		t.Errorf("pool defaults: %+v", p)
	}
	if f.Proxy.Listen != "127.0.0.1:6432" || f.AdminListen != "127.0.0.1:6433" || f.MetricsListen != "127.0.0.1:9930" {
		t.Errorf("listen defaults: %s %s %s", f.Proxy.Listen, f.AdminListen, f.MetricsListen)
	}
	if f.Pools.Databases["leads"].DBName != "leads" || f.Pools.DefaultService != "api" {
		t.Errorf("database defaults: %+v", f.Pools.Databases["leads"])
	}
}

func TestServiceOverrides(t *testing.T) {
	f, err := Parse([]byte(minimal + "services:\n  analytics: {max_connections: 1, reads: replica}\n  reports: {max_connections: 3, pool_mode: session}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := f.Pools.Services["analytics"]; a.MaxConnections != 1 || a.MinConnections != 1 || a.Reads != "replica" {
		t.Errorf("analytics: %+v", a)
	}
	if r := f.Pools.Services["reports"]; r.MaxConnections != 3 || r.PoolMode != poolmgr.ModeSession {
		t.Errorf("reports: %+v", r)
	}
}

func TestEveryProblemReported(t *testing.T) {
	bad := `
auth_type: kerberos
users:
  - {name: app, password: x, service: nope}
  - {name: app, password: y}
databases:
  leads: {primary: nohostport, user: ""}
services:
  api: {pool_mode: statement}
pool: {wait_timeout: -1s}
`
	_, err := Parse([]byte(bad))
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"auth_type", "unknown service \"nope\"", "appears twice", "want host:port", "user is required", "pool_mode", "wait_timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
	if _, err := Parse([]byte(minimal + "lisen: 1\n")); err == nil || !strings.Contains(err.Error(), "lisen") {
		t.Errorf("unknown key not refused: %v", err)
	}
	if _, err := Parse(nil); err == nil || !strings.Contains(err.Error(), "at least one database") {
		t.Errorf("empty file: %v", err)
	}
}
