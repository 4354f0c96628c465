package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
)

// buildWorm compiles this command into dir, for tests that run it as
// replica processes.
func buildWorm(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(filepath.Separator), ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building worm: %v\n%s", err, out)
	}
	return filepath.Join(dir, "worm")
}

// TestChainKill9: three `worm chain serve` processes; concurrent writers;
// every replica killed with SIGKILL at once; restarted on their
// directories, they hold every acknowledged write, and a write that was
// refused while they were down left nothing behind.
func TestChainKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs processes")
	}
	exe := buildWorm(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "cluster.key")
	if err := writeKeyFile(keyFile); err != nil {
		t.Fatal(err)
	}
	lc, err := startLocalChain(ctx, localChainConfig{Exe: exe, N: 3, Dir: filepath.Join(dir, "chain"), KeyFile: keyFile, SegmentSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Stop()
	sf := spaceFlags{keyFile: keyFile}
	key, err := sf.key()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := dialChain(ctx, lc.Addrs, key, "kill9")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const seg = 77
	if _, err := cl.Alloc(ctx, seg, []byte("m")); err != nil {
		t.Fatal(err)
	}
	sc, err := cl.CaptureSegment(ctx, seg)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	acked := map[uint32]string{}
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for off := uint32(w); off < 64; off += 4 {
				v := fmt.Sprintf("v%d", off)
				if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: off}, sc.Token, []byte(v)); err == nil {
					mu.Lock()
					acked[off] = v
					mu.Unlock()
				}
				if off >= 56 {
					return // leave the rest for after the crash
				}
			}
		}()
	}
	// Kill every replica while the writers run, once some writes are in.
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Microsecond) {
		mu.Lock()
		n := len(acked)
		mu.Unlock()
		if n >= 12 {
			break
		}
	}
	for i := range lc.Addrs {
		lc.Kill(i)
	}
	wg.Wait()
	if err := cl.Write(ctx, worm.Addr{Seg: seg, Off: 63}, sc.Token, []byte("down")); !errors.Is(err, worm.ErrUnavailable) && !errors.Is(err, worm.ErrUnknownOutcome) {
		t.Fatalf("write with every replica dead: %v", err)
	}
	if err := lc.startAll(ctx); err != nil {
		t.Fatal(err)
	}
	cl2, err := dialChain(ctx, lc.Addrs, key, "after")
	if err != nil {
		t.Fatal(err)
	}
	defer cl2.Close()
	t.Logf("%d writes acknowledged before the crash", len(acked))
	for off, v := range acked {
		got, err := cl2.Read(ctx, worm.Addr{Seg: seg, Off: off})
		if err != nil || string(got) != v {
			t.Fatalf("acknowledged write %d=%q after kill -9: %q, %v", off, v, got, err)
		}
	}
	if info, err := cl2.Check(ctx, seg); err != nil || info.Owner != "kill9" || string(info.Meta) != "m" {
		t.Fatalf("allocation after kill -9: %+v, %v", info, err)
	}
	// The segment token survived too: a write with it still works where
	// nothing was written, and the capture reports every acknowledged
	// value.
	sc2, err := cl2.CaptureSegment(ctx, seg)
	if err != nil {
		t.Fatal(err)
	}
	found := map[uint32]string{}
	for _, e := range sc2.Written {
		found[e.Off] = string(e.Value)
	}
	for off, v := range acked {
		if found[off] != v {
			t.Fatalf("capture after kill -9 reports %q at %d, want %q", found[off], off, v)
		}
	}
	if v, ok := found[63]; ok {
		t.Fatalf("the write refused while every replica was down is there: %q", v)
	}
	if err := cl2.Write(ctx, worm.Addr{Seg: seg, Off: 62}, sc2.Token, []byte("after")); err != nil {
		t.Fatalf("write after restart: %v", err)
	}
}
