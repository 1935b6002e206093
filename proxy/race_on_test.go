//go:build race

package proxy_test

// raceDetector: the race detector is on. Under it sync.Pool drops items
// at random, so allocation counts mean nothing.
const raceDetector = true
