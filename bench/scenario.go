package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// runSet holds a scenario's pgbench runs by workload, mode and target, in
// round order.
type runSet map[string][]measure

func (r *runSet) add(workload, mode, target string, m measure) {
	if *r == nil {
		*r = runSet{}
	}
	k := workload + " " + mode + " " + target
	(*r)[k] = append((*r)[k], m)
}

func (r runSet) of(workload, mode, target string) []measure {
	return r[workload+" "+mode+" "+target]
}

// onlyScenario runs one scenario of two pgshields in an environment of its
// own (-only policy, -only encryption), with their CPU profiles written
// to profiles when set, and prints its section.
func onlyScenario(profiles string, run func(e *env) (section string, err error)) error {
	e, err := newEnv(context.Background())
	if err != nil {
		return err
	}
	defer e.close()
	if profiles != "" {
		if e.profiles, err = filepath.Abs(profiles); err != nil {
			return err
		}
		if err := os.MkdirAll(e.profiles, 0o755); err != nil {
			return err
		}
	}
	section, err := run(e)
	fmt.Println(section)
	return err
}
