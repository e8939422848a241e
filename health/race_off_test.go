//go:build !race

package health_test

// raceEnabled reports a -race build, whose decoding runs several times slower.
const raceEnabled = false
