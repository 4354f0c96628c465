//go:build race

package netstack_test

// raceEnabled: the race detector allocates, allocation tests skip.
const raceEnabled = true
