//go:build race

package policy

// raceEnabledForRules: the race detector empties sync.Pools at random, so
// code whose buffers come from one (regexp) allocates now and then.
const raceEnabledForRules = true
