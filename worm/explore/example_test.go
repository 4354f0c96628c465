package explore_test

import (
	"errors"
	"fmt"

	"github.com/wormspace/wormspace/worm/explore"
)

// Two clients race to capture the one register; every interleaving of
// their messages is explored.
func ExampleExplore() {
	res, err := explore.Explore(explore.Config{
		Clients: []explore.Client{
			{Script: []explore.Action{{Op: explore.Capture}}},
			{Script: []explore.Action{{Op: explore.Capture}}},
		},
	})
	fmt.Println(res.States, res.Transitions, res.MaxDepth, err)
	// Output: 5189 19092 18 <nil>
}

// A deliberately broken acceptor: the explorer finds a violation and the
// trace replays.
func ExampleReplay() {
	cfg := explore.Config{
		NewAcceptor: explore.AmnesiacAcceptor,
		SkipDecides: true,
		Clients: []explore.Client{
			{Script: []explore.Action{{Op: explore.Capture}, {Op: explore.Write, Value: "a"}}},
			{Script: []explore.Action{{Op: explore.Capture}, {Op: explore.Write, Value: "b"}}},
		},
	}
	_, err := explore.Explore(cfg)
	var v *explore.Violation
	if errors.As(err, &v) {
		fmt.Println(v.Property, len(v.Trace))
		fmt.Println(explore.Replay(cfg, v.Trace))
	}
	// Output:
	// p2b 18
	// explore: p2b violated after 18 events: acc0 accepted "b" at 1.2, but "a" was chosen at 1.1
}
