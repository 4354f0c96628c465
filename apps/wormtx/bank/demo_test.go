package bank_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wormspace/wormspace/apps/wormtx"
	"github.com/wormspace/wormspace/apps/wormtx/bank"
	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

func TestDemo(t *testing.T) {
	for _, c := range []struct {
		name string
		o    bank.DemoOptions
	}{
		{"fault-free", bank.DemoOptions{Transfers: 8, Concurrency: 3}},
		{"coordinator-after-alloc", bank.DemoOptions{CoordinatorCrash: wormtx.CoordinatorAfterAlloc}},
		{"coordinator-after-1-post", bank.DemoOptions{CoordinatorCrash: wormtx.CoordinatorAfterPost, CrashAfterPosts: 1}},
		{"coordinator-before-await", bank.DemoOptions{CoordinatorCrash: wormtx.CoordinatorBeforeAwait}},
		{"participant-before-vote", bank.DemoOptions{ParticipantCrash: wormtx.ParticipantBeforeVote, Concurrency: 2}},
		{"participant-after-vote", bank.DemoOptions{ParticipantCrash: wormtx.ParticipantAfterVote, Concurrency: 2}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			st := spec.New(64)
			var log strings.Builder
			c.o.Log, c.o.Recovery, c.o.Transfers = &log, 20*time.Millisecond, max(c.o.Transfers, 5)
			rep, err := bank.Demo(ctx, func(id string) worm.Space { return st.Client(id) }, c.o)
			if err != nil {
				t.Fatalf("%v\n%s", err, log.String())
			}
			if !rep.OK() {
				t.Fatalf("invariants broken: %+v\n%s", rep, log.String())
			}
			if rep.Committed+rep.Aborted != c.o.Transfers {
				t.Fatalf("%d committed + %d aborted, want %d transfers\n%s", rep.Committed, rep.Aborted, c.o.Transfers, log.String())
			}
			if c.o.CoordinatorCrash != 0 && rep.CoordinatorCrashes != 1 {
				t.Fatalf("coordinator crashes %d, want 1", rep.CoordinatorCrashes)
			}
			if c.o.ParticipantCrash != 0 && rep.ParticipantCrashes != 1 {
				t.Fatalf("participant crashes %d, want 1\n%s", rep.ParticipantCrashes, log.String())
			}
			t.Logf("%+v", rep)
		})
	}
}

func ExampleDemo() {
	st := spec.New(64)
	rep, err := bank.Demo(context.Background(), func(id string) worm.Space { return st.Client(id) },
		bank.DemoOptions{Transfers: 4, CoordinatorCrash: wormtx.CoordinatorBeforeAwait, Recovery: 50 * time.Millisecond})
	fmt.Println(err, rep.Committed+rep.Aborted, rep.CoordinatorCrashes, rep.Total, rep.OK())
	// Output: <nil> 4 1 600 true
}
