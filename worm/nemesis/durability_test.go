package nemesis_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/client"
	"github.com/wormspace/wormspace/worm/localcluster"
)

func startCluster(t *testing.T, n int) *localcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := localcluster.Start(ctx, localcluster.Config{N: n, Dir: t.TempDir(), Wormd: wormd, SegmentSize: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

func dial(t *testing.T, c *localcluster.Cluster, id string) *client.Client {
	t.Helper()
	key, err := c.Key()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cl, err := client.Dial(ctx, client.Config{Servers: c.Servers(), Key: key, ID: id,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), OpTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// genFile returns the (single) generation file of a stopped wormd's data
// directory and the length of its written part (frames before the
// preallocated zeros).
func genFile(t *testing.T, dir string) (string, int) {
	t.Helper()
	ms, _ := filepath.Glob(filepath.Join(dir, "gen-*.log"))
	if len(ms) != 1 {
		t.Fatalf("generation files in %s: %v", dir, ms)
	}
	b, err := os.ReadFile(ms[0])
	if err != nil {
		t.Fatal(err)
	}
	used := len(bytes.TrimRight(b, "\x00"))
	return ms[0], used
}

func writeMany(t *testing.T, cl *client.Client, seg uint64, n int) map[worm.Addr][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := cl.Alloc(ctx, seg, nil); err != nil {
		t.Fatal(err)
	}
	out := map[worm.Addr][]byte{}
	for i := 0; i < n; i++ {
		a := worm.Addr{Seg: seg, Off: uint32(i)}
		tok, err := cl.Capture(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		v := []byte(fmt.Sprintf("value-%d-%d", seg, i))
		if err := cl.Write(ctx, a, tok, v); err != nil {
			t.Fatal(err)
		}
		out[a] = v
	}
	return out
}

// TestCorruptRecordRefused: a byte flipped inside a record that later
// synced batches follow is corruption, not a torn write: the stopped
// wormd, started again, refuses to serve and names the file and offset.
// The cluster keeps serving the right values from the other two.
func TestCorruptRecordRefused(t *testing.T) {
	c := startCluster(t, 3)
	cl := dial(t, c, "corrupt")
	vals := writeMany(t, cl, 5, 200) // every write is its own synced batch
	if err := c.Terminate(0, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	path, used := genFile(t, c.Nodes[0].Data)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Flip bytes a third of the way in: inside the records of an early
	// batch, with many intact commits after it.
	at := used / 3
	for i := at; i < at+4; i++ {
		b[i] ^= 0x5a
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped 4 bytes at offset %d of %s (%d bytes written)", at, filepath.Base(path), used)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = c.Restart(ctx, 0)
	if err == nil {
		t.Fatalf("wormd started on a data file with a corrupt record")
	}
	if c.Nodes[0].Running() {
		t.Fatal("wormd 1 is running after refusing")
	}
	log := readLog(t, c.Nodes[0].Log)
	re := regexp.MustCompile(regexp.QuoteMeta(filepath.Base(path)) + `: corrupt at offset (\d+)`)
	m := re.FindStringSubmatch(log)
	if m == nil {
		t.Fatalf("wormd's refusal does not name the file and offset; log:\n%s", tailLines(log, 5))
	}
	t.Logf("wormd refused: %s", lastLineWith(log, "corrupt"))
	// The other two still serve every acknowledged value.
	for a, want := range vals {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := cl.Read(rctx, a)
		rcancel()
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %v with wormd 1 refusing: %q, %v; want %q", a, got, err, want)
		}
	}
}

// TestTornTailCut: damage confined to the last batch (a torn write) is
// cut at startup, logged, and everything acknowledged before it served.
func TestTornTailCut(t *testing.T) {
	c := startCluster(t, 1)
	cl := dial(t, c, "torn")
	vals := writeMany(t, cl, 5, 50)
	if err := c.Terminate(0, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	path, used := genFile(t, c.Nodes[0].Data)
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	// A half-written frame after the last commit: a length and garbage.
	if _, err := f.WriteAt([]byte{0xde, 0xad, 0xbe, 0xef, 40, 0, 0, 0, 1, 2, 3}, int64(used)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := c.Restart(ctx, 0); err != nil {
		t.Fatalf("wormd refused a torn tail: %v", err)
	}
	cl2 := dial(t, c, "torn2")
	for a, want := range vals {
		got, err := cl2.Read(ctx, a)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("read %v after cutting a torn tail: %q, %v; want %q", a, got, err, want)
		}
	}
}

func readLog(t *testing.T, p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func tailLines(s string, n int) string {
	ls := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	return strings.Join(ls, "\n")
}

func lastLineWith(s, sub string) string {
	ls := strings.Split(s, "\n")
	for i := len(ls) - 1; i >= 0; i-- {
		if strings.Contains(ls[i], sub) {
			return ls[i]
		}
	}
	return ""
}
