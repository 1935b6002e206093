// Package example holds the example application of the operations guide
// pgshield implements (an insurance lead-generation platform): its schema
// and its policy, which `pgshield dev` loads and the tests use.
package example

import _ "embed"

//go:embed schema.sql
var schema string

// Schema is the SQL that creates the example tables (idempotent: CREATE …
// IF NOT EXISTS, and a trigger replaced).
func Schema() string { return schema }

//go:embed policy.yaml
var policyFile string

// Policy is the example policy file: validation rules of the example
// tables (docs/policy.md explains each key).
func Policy() string { return policyFile }

//go:embed encryption.yaml
var encryptionConfig string

// Encryption is the example application's encryption and masking: the
// encryption and masking sections of a configuration file, in YAML.
func Encryption() string { return encryptionConfig }
