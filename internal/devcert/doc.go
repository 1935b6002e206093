// Package devcert makes a throwaway certificate authority and a server
// certificate signed by it, for `pgshield dev`, tests and benchmarks: the
// proxy's own TLS listener and PostgreSQL clusters started by pgcluster use
// them so that clients can connect with sslmode=verify-full.
//
// The keys are ECDSA P-256, the certificates are valid for a year, and the
// files are reused while they stay valid. Never use them in production.
package devcert
