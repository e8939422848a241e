//go:build race

package rrl

// raceOn: the race detector slows the table test's millions of checks a
// hundredfold, and it is single-threaded: nothing for the detector to find.
const raceOn = true
