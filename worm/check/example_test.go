package check_test

import (
	"context"
	"fmt"
	"time"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/check"
	"github.com/wormspace/wormspace/worm/spec"
)

func Example() {
	ctx := context.Background()
	st := spec.New(16)
	rec := check.NewRecorder()
	a, b := rec.Wrap(st.Client("a")), rec.Wrap(st.Client("b"))
	a.Alloc(ctx, 1, nil)
	r := worm.Addr{Seg: 1, Off: 0}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if tok, err := b.Capture(ctx, r); err == nil {
			b.Write(ctx, r, tok, []byte("b"))
		}
	}()
	a.WriteUnsafe(ctx, r, []byte("a"))
	<-done
	a.Read(ctx, r)
	ok, res := check.Check(rec.History(), time.Minute)
	fmt.Println(ok, res.Outcome)
	// Output: true Ok
}
