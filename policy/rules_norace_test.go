//go:build !race

package policy

const raceEnabledForRules = false
