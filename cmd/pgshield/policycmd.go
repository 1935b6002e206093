package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/pgshield/pgshield/cmd/pgshield/config"
	"github.com/pgshield/pgshield/policy"
)

// policyCmd is `pgshield policy sql`: the SQL the policy compiles to, to
// apply as a migration so that what bypasses pgshield keeps the rules too.
func policyCmd(args []string) error {
	if len(args) == 0 || args[0] != "sql" {
		fmt.Fprintln(os.Stderr, "usage: pgshield policy sql --config pgshield.yaml [--database name]")
		return exitCode(2)
	}
	fs := flag.NewFlagSet("policy sql", flag.ContinueOnError)
	path := fs.String("config", "pgshield.yaml", "configuration `file` (its policy_file is compiled)")
	database := fs.String("database", "", "only this `database` (the name clients connect to); default every database the policy has rules for")
	if err := parseFlags(fs, args[1:]); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	if cfg.Policy == nil {
		return fmt.Errorf("%s names no policy_file", *path)
	}
	dbs := cfg.Policy.Databases()
	if *database != "" {
		dbs = []string{*database}
	}
	for _, db := range dbs {
		fmt.Printf("-- database %s\n%s\n", db, policy.SQLFor(cfg.Policy, db, cfg.Encrypted(db)))
	}
	return nil
}
