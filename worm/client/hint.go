package client

// AssumeAllocated tells the client that segment seg is allocated, which
// it otherwise checks (one quorum round trip) before its first unsafe
// write or read of seg: for applications in which another process
// allocated seg and said so (WormTX's coordinator, in the prepare it sends
// each participant). A wrong claim lets an unsafe write land in an
// unallocated segment, so only claims backed by an Alloc that won belong
// here.
func (cl *Client) AssumeAllocated(seg uint64) { cl.p.MarkAllocated(seg) }
