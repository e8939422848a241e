//go:build !race

package rrl

const raceOn = false
