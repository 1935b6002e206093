package metrics

import "time"

// Alert is one firing condition, for SHOW ALERTS.
type Alert struct {
	Name      string // e.g. DatabasePoolUtilizationHigh; the same names as the shipped Prometheus rules
	Severity  string // warning, critical
	Subject   string // what it is about: "api/app", a backend address, a client id …
	Value     float64
	Threshold float64
	Since     time.Time // when the Alerter first saw it firing, in an unbroken run
	Message   string    // one sentence an operator can act on
}
