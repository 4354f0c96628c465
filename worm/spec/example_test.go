package spec_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/spec"
)

func Example() {
	ctx := context.Background()
	st := spec.New(64)
	a, b := st.Client("a"), st.Client("b")
	defer a.Close()
	defer b.Close()

	info, _ := a.Alloc(ctx, 7, []byte("a's metadata"))
	fmt.Println("a won:", info.Won)
	info, _ = b.Alloc(ctx, 7, []byte("b's metadata"))
	fmt.Println("b won:", info.Won, "owner:", info.Owner)

	r := worm.Addr{Seg: 7, Off: 0}
	ta, _ := a.Capture(ctx, r)
	tb, _ := b.Capture(ctx, r) // preempts a
	fmt.Println("a:", a.Write(ctx, r, ta, []byte("from a")))
	fmt.Println("b:", b.Write(ctx, r, tb, []byte("from b")))
	v, _ := a.Read(ctx, r)
	fmt.Printf("read: %s\n", v)
	_, err := a.Capture(ctx, r)
	w, _ := worm.WrittenValue(err)
	fmt.Printf("capture: written=%v value=%s\n", errors.Is(err, worm.ErrWritten), w)
	// Output:
	// a won: true
	// b won: false owner: a
	// a: worm: preempted by a higher capture
	// b: <nil>
	// read: from b
	// capture: written=true value=from b
}

func ExampleStore_InjectFault() {
	ctx := context.Background()
	st := spec.New(16)
	c := st.Client("app")
	c.Alloc(ctx, 1, nil)
	r := worm.Addr{Seg: 1, Off: 0}

	// The next write takes effect but its reply is "lost".
	st.InjectFault("app", spec.FaultUnknownApplied, 1, spec.OpWriteUnsafe)
	err := c.WriteUnsafe(ctx, r, []byte("vote: yes"))
	fmt.Println(errors.Is(err, worm.ErrUnknownOutcome))
	v, _ := c.Read(ctx, r) // the application reads to find out
	fmt.Printf("%s\n", v)
	// Output:
	// true
	// vote: yes
}
