package bank

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/wormspace/wormspace/apps/wormtx"
)

// A ledger file keeps votes, locks and applied outcomes across a restart
// (reopening stands for a new process): a prepared transfer votes the
// same way again and stays locked until applied.
func TestLedgerFileSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "p0.json")
	l, err := OpenLedgerFile(path, "p0", map[string]int64{"a": 100, "b": 100})
	if err != nil {
		t.Fatal(err)
	}
	d := wormtx.Descriptor{Participants: []string{"p0", "p1"}, Payload: Transfer{From: "a", To: "x", Amount: 30}.Marshal()}
	if yes, err := l.Prepare(ctx, 7, d); err != nil || !yes {
		t.Fatalf("Prepare = %v, %v", yes, err)
	}
	// Restart: the vote and the lock were recorded before Prepare returned.
	l2, err := OpenLedgerFile(path, "p0", map[string]int64{"a": 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := l2.Locked(); len(got) != 1 || got[0] != "a" {
		t.Fatalf("locked after restart: %v, want [a]", got)
	}
	if yes, err := l2.Prepare(ctx, 7, d); err != nil || !yes {
		t.Fatalf("Prepare after restart = %v, %v; want the recorded yes", yes, err)
	}
	if err := l2.Apply(ctx, 7, wormtx.Commit); err != nil {
		t.Fatal(err)
	}
	l3, err := LoadLedgerFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := l3.Balance("a"); b != 70 || len(l3.Locked()) != 0 || l3.Total() != 170 {
		t.Fatalf("after commit: a=%d locked=%v total=%d", b, l3.Locked(), l3.Total())
	}
	if o, ok := l3.Applied(7); !ok || o != wormtx.Commit {
		t.Fatalf("Applied(7) = %v, %v", o, ok)
	}
	if _, err := OpenLedgerFile(path, "p1", nil); err == nil {
		t.Fatal("opened p0's ledger as p1")
	}
}
