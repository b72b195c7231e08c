package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchyard/switchyard/integration/harness"
	"github.com/switchyard/switchyard/integration/harness/harnesstest"
)

// TestDamaged_FollowerRaftStoreFailsLoudlyThenRejoins SIGKILLs a follower,
// damages its raft.db (truncated, then on another follower bit-flipped),
// and starts it: it exits non-zero naming the file and the remedy, with no
// panic and without ever joining the query group. Following the remedy (the
// data directory moved away, started again) it rejoins and ends identical.
func TestDamaged_FollowerRaftStoreFailsLoudlyThenRejoins(t *testing.T) {
	t.Parallel()
	ctx := harnesstest.Context(t, 4*time.Minute)
	sy, _ := binaries(t)
	url := harnesstest.StartNATS(t)
	nc := connectNATS(t, url)
	c := harnesstest.StartCluster(t, ctx, harness.ClusterOptions{Switchyard: sy, NATS: url})
	for i := range 10 {
		in := applyBlueGreen(fmt.Sprintf("it-dmg-%d", i), fmt.Sprintf("dmg-%d", i), fmt.Sprintf("dmg%d", i))
		if res, _, err := sendUntilAnswered(ctx, nc, in, 10*time.Second); err != nil || !res.GetAccepted() {
			t.Fatalf("apply %d: %v %v", i, res, err)
		}
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}

	damages := []struct {
		name string
		hurt func(path string) error
	}{
		{"truncated", func(path string) error {
			// bbolt grows its file ahead of use, so only a cut into the
			// pages in use damages it: keep the meta pages and one more.
			return os.Truncate(path, 3*4096+100)
		}},
		{"bit-flipped", func(path string) error {
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			st, _ := f.Stat()
			for off := int64(2 * 4096); off < st.Size(); off += 4096 {
				b := []byte{0}
				if _, err := f.ReadAt(b, off); err != nil {
					return err
				}
				b[0] ^= 0x81
				if _, err := f.WriteAt(b, off); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, d := range damages {
		leader, err := c.WaitLeader(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := (leader + 1) % len(c.Coordinators)
		co := c.Coordinators[victim]
		if err := c.Kill(victim); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(co.DataDir, "raft.db")
		if err := d.hurt(path); err != nil {
			t.Fatal(err)
		}
		if err := co.Process.Start(); err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		select {
		case <-co.Exited():
		case <-wctx.Done():
			wcancel()
			t.Fatalf("%s with a %s raft.db did not exit within 30s", co.ID, d.name)
		}
		wcancel()
		stderr, _ := os.ReadFile(co.StderrPath())
		text := string(stderr)
		// Only this run's part of the log.
		if i := strings.LastIndex(text, "--- harness: start"); i >= 0 {
			text = text[i:]
		}
		for _, want := range []string{path, "is damaged", "will not start", "mv " + co.DataDir, "--bootstrap-expect 0 --retry-join"} {
			if !strings.Contains(text, want) {
				t.Errorf("%s with a %s raft.db: stderr lacks %q:\n%s", co.ID, d.name, want, text)
			}
		}
		// bbolt's own assertion may be quoted in the message; a crash
		// would print a runtime error and goroutine stacks.
		for _, bad := range []string{"fatal error:", "goroutine ", "[recovered]"} {
			if strings.Contains(text, bad) {
				t.Errorf("%s with a %s raft.db crashed (%q):\n%s", co.ID, d.name, bad, text)
			}
		}
		// The remedy: the damaged directory moved away, the node started
		// again; it rejoins and catches up from the leader.
		if err := os.Rename(co.DataDir, co.DataDir+".damaged-"+d.name); err != nil {
			t.Fatal(err)
		}
		if err := c.Start(ctx, victim); err != nil {
			t.Fatal(err)
		}
		if err := c.WaitReplicated(ctx); err != nil {
			t.Fatal(err)
		}
		if err := harness.Poll(ctx, 100*time.Millisecond, func(ctx context.Context) error {
			ans, err := c.Rollouts(ctx, victim, "")
			if err != nil {
				return err
			}
			if n := len(ans.GetRollouts()); n != 10 {
				return fmt.Errorf("%s has %d rollouts after rejoining, want 10", co.ID, n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		names := make([]string, 10)
		for i := range names {
			names[i] = fmt.Sprintf("dmg-%d", i)
		}
		assertReplicasAgree(t, ctx, c, names...)
	}
}
