//go:build !race

package health_test

// raceEnabled: the race detector multiplies CPU figures.
const raceEnabled = false
