//go:build race

package integration

// raceEnabled builds the child binaries with -race too when the tests run
// with it, so a race inside the coordinator or an agent fails the test that
// provoked it (harnesstest turns their reports into errors).
const raceEnabled = true
