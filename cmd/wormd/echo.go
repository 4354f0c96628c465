package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"

	"github.com/wormspace/wormspace/netstack"
)

// serveEcho serves a raw TCP echo on addr over the same network stack as
// the WOR service (-echo-listen). It is the floor `worm compare` measures
// a wormd against: inside a VM, and above all with netstack in the guest
// (where wormd's process holds the only TCP stack on the NIC), no other
// process could serve a round trip over the same path. It echoes bytes
// back unchanged, one goroutine per connection, and nothing else; it is
// off by default and only a benchmark turns it on.
func serveEcho(ctx context.Context, nw netstack.Network, addr string, log *slog.Logger) (io.Closer, error) {
	l, err := nw.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-echo-listen %s on %s: %w", addr, nw, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	log.Info("echo floor", "addr", l.Addr().String(), "stack", nw.String())
	return l, nil
}
