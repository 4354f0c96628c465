package client

import "fmt"

// ConnStates describes each connection's binding (tests' failure
// messages).
func (cl *Client) ConnStates() []string {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	out := []string{fmt.Sprintf("view %d pending %d ready %v changing %v", cl.view.epoch, cl.pendingNext, cl.readyLocked(), cl.changingLocked())}
	for i, cn := range cl.conns {
		cn.mu.Lock()
		out = append(out, fmt.Sprintf("%d %s up=%v epoch=%d serving=%v stale=%v rebinding=%v pending=%d err=%v", i, cn.dialAddrLocked(), cn.nc != nil, cn.epoch, cn.serving, cn.stale, cn.rebinding, len(cn.pending), cn.lastErr))
		cn.mu.Unlock()
	}
	return out
}

func (cn *conn) dialAddrLocked() string {
	if cn.target != "" {
		return cn.target
	}
	return cn.addr
}
