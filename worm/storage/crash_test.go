package storage

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm/paxos"
)

// batchEnd is the file offset after a sync's commit and the number of
// records that sync covered.
type batchEnd struct {
	off  int64
	recs int
}

// built is a closed single-generation log and what went into it.
type built struct {
	dir     string
	content []byte // the generation file, preallocated zeros included
	tail    int64  // file offset after the last commit
	batches []batchEnd
	recs    []paxos.Record
	model   []string // model[k]: state after recs[:k]
	segs    uint64
}

// buildLog writes steps random requests' records with a sync after
// every batch of a random size; the last batch holds lastBatch steps.
func buildLog(t *testing.T, sd uint64, steps, lastBatch int) *built {
	t.Helper()
	w := newWorkload(sd, 4)
	rng := rand.New(rand.NewPCG(sd, 7))
	dir := t.TempDir()
	opts := testOpts()
	opts.Volatile = true
	l, _ := mustOpen(t, dir, opts)
	b := &built{dir: dir, batches: []batchEnd{{off: l.Stats().LogBytes}}}
	for done := 0; done < steps; {
		n := 1 + rng.IntN(6)
		if done+n >= steps-lastBatch {
			n = max(steps-done, 1)
			if done < steps-lastBatch {
				n = steps - lastBatch - done
			}
		}
		for range n {
			if _, err := l.Append(w.step()); err != nil {
				t.Fatal(err)
			}
		}
		done += n
		if _, err := l.Sync(); err != nil {
			t.Fatal(err)
		}
		b.batches = append(b.batches, batchEnd{off: l.Stats().LogBytes, recs: len(w.recs)})
	}
	b.tail = l.Stats().LogBytes
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	var err error
	if b.content, err = os.ReadFile(filepath.Join(dir, genName(1))); err != nil {
		t.Fatal(err)
	}
	b.recs, b.model, b.segs = w.recs, modelAfter(w.recs), w.lo+w.segs
	return b
}

// synced returns how many records the syncs that fit in the first off
// bytes covered.
func (b *built) synced(off int64) int {
	n := 0
	for _, e := range b.batches {
		if e.off <= off {
			n = e.recs
		}
	}
	return n
}

// variant writes a copy of the log whose generation file is content.
func (b *built) variant(t *testing.T, content []byte) string {
	t.Helper()
	dir := t.TempDir()
	id, err := os.ReadFile(filepath.Join(b.dir, identityName))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, identityName), id, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, genName(1)), content, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// checkPrefix opens dir and checks that it recovers the state after a
// prefix of the records holding at least the first atLeast.
func (b *built) checkPrefix(t *testing.T, dir string, atLeast int, what string) *Log {
	t.Helper()
	opts := testOpts()
	opts.Volatile = true
	l, acc, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	k := l.Stats().Recovered
	if k < atLeast || k > len(b.recs) {
		t.Fatalf("%s: recovered %d records, synced %d of %d", what, k, atLeast, len(b.recs))
	}
	if got := canon(acc); got != b.model[k] {
		t.Fatalf("%s: recovered state is not the state after %d records", what, k)
	}
	return l
}

// TestCrashAtEveryOffset cuts the log at every offset of its first KiB,
// at every sync boundary (±1) and at a seeded sample of the others, both
// as a short file and as one whose rest reads zero (preallocated space):
// the recovered state is the state after a prefix of the appended records
// holding everything synced before the cut, and the log keeps working.
func TestCrashAtEveryOffset(t *testing.T) {
	sd := seed(t)
	b := buildLog(t, sd, 250, 5)
	rng := rand.New(rand.NewPCG(sd, 11))
	offs := map[int64]bool{}
	for o := int64(0); o < min(1024, b.tail+1); o++ {
		offs[o] = true
	}
	for _, e := range b.batches {
		for _, d := range []int64{-1, 0, 1} {
			if o := e.off + d; o >= 0 && o <= b.tail {
				offs[o] = true
			}
		}
	}
	for range 300 {
		offs[rng.Int64N(b.tail+1)] = true
	}
	sorted := make([]int64, 0, len(offs))
	for o := range offs {
		sorted = append(sorted, o)
	}
	slices.Sort(sorted)
	t.Logf("%d records in %d syncs, %d bytes; %d cut points", len(b.recs), len(b.batches)-1, b.tail, len(sorted))
	for i, off := range sorted {
		for _, zeroTail := range []bool{false, true} {
			content := b.content[:off]
			if zeroTail {
				content = append(slices.Clone(b.content[:off]), make([]byte, len(b.content)-int(off))...)
			}
			dir := b.variant(t, content)
			what := fmt.Sprintf("cut at %d (zero tail %v)", off, zeroTail)
			eff := off // the cut, moved past zeros that the zero tail restores
			for zeroTail && eff < int64(len(b.content)) && b.content[eff] == 0 {
				eff++
			}
			if eff < b.batches[0].off {
				// Initialisation syncs generation 1 before the identity
				// exists: a torn one is damage, not a crash.
				if _, _, err := Open(dir, testOpts()); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("%s: got %v, want ErrCorrupt", what, err)
				}
				continue
			}
			l := b.checkPrefix(t, dir, b.synced(eff), what)
			if i%25 == 0 {
				k := l.Stats().Recovered
				if _, err := l.Append(b.recs[k : k+1]); k < len(b.recs) && err != nil {
					t.Fatal(err)
				}
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
				if k < len(b.recs) {
					l = b.checkPrefix(t, dir, k+1, what+", appended, reopened")
				} else {
					l = b.checkPrefix(t, dir, k, what+", reopened")
				}
			}
			l.Close()
			os.RemoveAll(dir)
		}
	}
}

// TestLostPagesInLastBatch: a power failure can persist some pages of the
// last, unsynced batch and not others (zeros in preallocated space). That
// is a torn tail, not corruption.
func TestLostPagesInLastBatch(t *testing.T) {
	sd := seed(t)
	b := buildLog(t, sd, 200, 120)
	rng := rand.New(rand.NewPCG(sd, 13))
	start, end := b.batches[len(b.batches)-2].off, b.tail
	if end-start < 3*512 {
		t.Fatalf("last batch only %d bytes", end-start)
	}
	for range 40 {
		content := slices.Clone(b.content)
		// Lose one or more whole 512-byte sectors of the last batch,
		// keeping the sector holding its commit.
		for range 1 + rng.IntN(3) {
			sec := (start + rng.Int64N(end-start)) &^ 511
			sec = max(sec, start)
			clear(content[sec:min((sec+512)&^511, end-1)])
		}
		dir := b.variant(t, content)
		l := b.checkPrefix(t, dir, b.batches[len(b.batches)-2].recs, "lost sectors")
		l.Close()
		os.RemoveAll(dir)
	}
}

// TestBitFlips: a flipped bit in any synced batch but the last is
// reported as ErrCorrupt with file and offset, never served; damage
// anywhere (random garbage, any place) never yields a wrong state.
func TestBitFlips(t *testing.T) {
	sd := seed(t)
	b := buildLog(t, sd, 200, 3)
	rng := rand.New(rand.NewPCG(sd, 17))
	lastStart := b.batches[len(b.batches)-2].off
	for i := range 300 {
		content := slices.Clone(b.content)
		pos := rng.Int64N(lastStart)
		content[pos] ^= 1 << rng.IntN(8)
		dir := b.variant(t, content)
		_, _, err := Open(dir, testOpts())
		var ce *CorruptError
		if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) {
			t.Fatalf("flip %d at %d: got %v, want a *CorruptError", i, pos, err)
		}
		if ce.File != genName(1) || ce.Offset > pos {
			t.Fatalf("flip at %d reported as %v", pos, ce)
		}
		os.RemoveAll(dir)
	}
	for i := range 300 {
		content := slices.Clone(b.content)
		pos := rng.Int64N(b.tail + 64)
		for j := range 1 + rng.IntN(8) {
			if int(pos)+j < len(content) {
				content[int(pos)+j] = byte(rng.Uint32())
			}
		}
		dir := b.variant(t, content)
		opts := testOpts()
		opts.Volatile = true
		l, acc, err := Open(dir, opts)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("garbage %d at %d: %v", i, pos, err)
			}
		} else {
			k := l.Stats().Recovered
			if k < b.batches[len(b.batches)-2].recs || canon(acc) != b.model[k] {
				t.Fatalf("garbage %d at %d: recovered a wrong state (%d records)", i, pos, k)
			}
			l.Close()
		}
		os.RemoveAll(dir)
	}
}

const killChildEnv = "WORM_STORAGE_KILL_CHILD"

// TestKillChild is the child of TestKill9: it writes register i of
// segment base+i/16 with "value-i", syncs, and prints i and the durable
// position once durable.
func TestKillChild(t *testing.T) {
	dir := os.Getenv(killChildEnv)
	if dir == "" {
		t.Skip("child process of TestKill9 only")
	}
	base, _ := strconv.ParseUint(os.Getenv(killChildEnv+"_BASE"), 10, 64)
	l, acc := mustOpen(t, dir, testOpts())
	var recs []paxos.Record
	var resp paxos.Response
	for i := 0; ; i++ {
		seg, off := base+uint64(i/testSegSize), uint32(i%testSegSize)
		bal := paxos.Ballot{Round: 1, Node: 1}
		recs = acc.Handle(&paxos.Request{Kind: paxos.KindPrepare, Seg: seg, Off: off, Ballot: bal}, &resp, recs[:0])
		recs = acc.Handle(&paxos.Request{Kind: paxos.KindAccept, Seg: seg, Off: off, Ballot: bal, Values: [][]byte{fmt.Appendf(nil, "value-%d", i)}}, &resp, recs)
		if _, err := l.Append(recs); err != nil {
			t.Fatal(err)
		}
		if i%3 == 2 {
			d, err := l.Sync()
			if err != nil {
				t.Fatal(err)
			}
			fmt.Printf("%d %d\n", i, d)
		}
	}
}

// TestKill9 kills a child that appends and syncs with SIGKILL at a random
// moment, three times over: every register the child reported durable is
// there after the reopen, and the log reaches every position it reported.
func TestKill9(t *testing.T) {
	sd := seed(t)
	rng := rand.New(rand.NewPCG(sd, 19))
	dir := t.TempDir()
	reported := map[uint64]int{} // base -> highest i reported
	var maxPos atomic.Uint64     // highest durable position reported
	for round := range 3 {
		base := uint64(round) * 1000
		cmd := exec.Command(os.Args[0], "-test.run=^TestKillChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), killChildEnv+"="+dir, killChildEnv+"_BASE="+strconv.FormatUint(base, 10))
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		lines := make(chan int, 1024)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var i int
				var pos uint64
				if _, err := fmt.Sscanf(sc.Text(), "%d %d", &i, &pos); err == nil {
					lines <- i
					maxPos.Store(max(maxPos.Load(), pos))
				}
			}
		}()
		// Wait for the first durable report, then a random while more.
		reported[base] = -1
		select {
		case i, ok := <-lines:
			if !ok {
				cmd.Wait()
				t.Fatal("child exited before reporting anything")
			}
			reported[base] = i
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			t.Fatal("child reported nothing in 20s")
		}
		time.Sleep(time.Duration(20+rng.IntN(200)) * time.Millisecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for i := range lines {
			reported[base] = i
		}
		cmd.Wait()

		l, acc := mustOpen(t, dir, testOpts())
		if end := l.Stats().End; end < maxPos.Load() {
			t.Fatalf("round %d: recovered log ends at %d, the child reported %d durable", round, end, maxPos.Load())
		}
		for b, last := range reported {
			for i := 0; i <= last; i++ {
				req := paxos.Request{Kind: paxos.KindRead, Seg: b + uint64(i/testSegSize), Off: uint32(i % testSegSize)}
				var resp paxos.Response
				acc.Handle(&req, &resp, nil)
				if want := fmt.Sprintf("value-%d", i); string(resp.Reg.Value) != want {
					t.Fatalf("round %d: register %d of base %d holds %q, want %q (child reported %d)", round, i, b, resp.Reg.Value, want, last)
				}
			}
		}
		t.Logf("round %d: %d registers reported durable and found", round, reported[base]+1)
		l.Close()
	}
}
