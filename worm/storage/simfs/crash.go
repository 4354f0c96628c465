package simfs

import (
	"bytes"
	"slices"
	"strconv"
)

// crashLocked crashes the machine: a power failure resolves every
// unsynced change, a process crash keeps them; both kill every handle and
// lock.
func (d *Disk) crashLocked(power bool) {
	d.down, d.armed = true, 0
	d.boot++
	for _, n := range d.inodes {
		n.opens, n.locked = 0, 0
	}
	if !power {
		d.stats.Kills++
		d.trace("process crash (the page cache survives)")
		return
	}
	d.stats.PowerLosses++
	d.trace("power failure")
	for _, n := range d.inodes {
		if n.dir {
			d.resolveDir(n)
		} else {
			d.resolveFile(n)
		}
	}
	// What is not reachable through durable names is gone.
	var live []*inode
	var walk func(n *inode)
	walk = func(n *inode) {
		live = append(live, n)
		if !n.dir {
			return
		}
		names := make([]string, 0, len(n.entries))
		for name, c := range n.entries {
			c.links = 0
			names = append(names, name)
		}
		slices.Sort(names)
		for _, name := range names {
			c := n.entries[name]
			c.links++
			if c.links == 1 {
				walk(c)
			}
		}
	}
	walk(d.root)
	d.inodes = live
}

// resolveDir keeps a seeded prefix of dir's unsynced name changes.
func (d *Disk) resolveDir(n *inode) {
	if len(n.dirOps) == 0 {
		n.entries = cloneEntries(n.durEntries)
		return
	}
	var k int
	switch d.rng.IntN(3) {
	case 0:
		k = 0
	case 1:
		k = len(n.dirOps)
	default:
		k = d.rng.IntN(len(n.dirOps) + 1)
	}
	for _, op := range n.dirOps[:k] {
		switch op.kind {
		case 'c':
			n.durEntries[op.name] = op.target
		case 'r':
			delete(n.durEntries, op.name)
		case 'm':
			if t := n.durEntries[op.name]; t != nil {
				n.durEntries[op.to] = t
				delete(n.durEntries, op.name)
			}
		}
	}
	d.stats.DirLost += len(n.dirOps) - k
	d.trace("  directory: kept %d of %d unsynced name changes", k, len(n.dirOps))
	n.dirOps = nil
	n.entries = cloneEntries(n.durEntries)
}

// resolveFile makes a seeded choice of n's unsynced changes durable.
func (d *Disk) resolveFile(n *inode) {
	if len(n.pending) == 0 {
		n.data = bytes.Clone(n.durable)
		return
	}
	ops := n.pending
	res := bytes.Clone(n.durable)
	mode := d.rng.IntN(numModes)
	what := ""
	switch mode {
	case KeptNone:
	case KeptAll:
		for _, op := range ops {
			res = op.apply(res)
		}
	case KeptPrefix:
		k := d.rng.IntN(len(ops) + 1)
		for _, op := range ops[:k] {
			res = op.apply(res)
		}
		what = "first " + strconv.Itoa(k)
	case KeptTorn:
		k := d.rng.IntN(len(ops))
		for _, op := range ops[:k] {
			res = op.apply(res)
		}
		op := ops[k]
		if !op.resize {
			cut := d.rng.IntN(len(op.data) + 1)
			op.data = op.data[:cut]
			what = "first " + strconv.Itoa(k) + ", then " + strconv.Itoa(cut) + " of " + strconv.Itoa(len(ops[k].data)) + " bytes"
		} else {
			what = "first " + strconv.Itoa(k+1)
		}
		res = op.apply(res)
	case KeptPages:
		res = d.pages(n.durable, ops)
	}
	d.stats.Kept[mode]++
	d.trace("  file (%d bytes durable, %d unsynced changes): kept %s %s -> %d bytes", len(n.durable), len(ops), modeNames[mode], what, len(res))
	n.durable, n.data, n.pending = res, bytes.Clone(res), nil
}

// pages builds what a device may hold after the page cache wrote back
// some versions of the changed pages in any order: every page any version
// it had since the last sync (possibly torn at sector boundaries between
// two consecutive versions), the size any the file had.
func (d *Disk) pages(durable []byte, ops []fileOp) []byte {
	ps := int64(d.opts.PageSize)
	w := bytes.Clone(durable)
	sizes := []int64{int64(len(w))}
	versions := map[int64][][]byte{}
	page := func(b []byte, p int64) []byte {
		pg := make([]byte, ps)
		if lo := p * ps; lo < int64(len(b)) {
			copy(pg, b[lo:min(lo+ps, int64(len(b)))])
		}
		return pg
	}
	for _, op := range ops {
		before := int64(len(w))
		w = op.apply(w)
		var lo, hi int64 // changed byte range [lo, hi)
		if op.resize {
			lo, hi = min(before, op.off), max(before, op.off)
		} else {
			lo, hi = op.off, op.off+int64(len(op.data))
		}
		if hi > lo {
			for p := lo / ps; p <= (hi-1)/ps; p++ {
				versions[p] = append(versions[p], page(w, p))
			}
		}
		sizes = append(sizes, int64(len(w)))
	}
	size := sizes[d.rng.IntN(len(sizes))]
	res := make([]byte, size)
	ss := int64(d.opts.SectorSize)
	for p := int64(0); p*ps < size; p++ {
		cands := versions[p]
		pg := page(durable, p)
		if len(cands) > 0 {
			v := d.rng.IntN(len(cands) + 1)
			if v > 0 {
				chosen := cands[v-1]
				if d.rng.IntN(4) == 0 {
					// Torn: each sector from this version or the one before.
					prev := pg
					if v > 1 {
						prev = cands[v-2]
					}
					chosen = bytes.Clone(chosen)
					for s := int64(0); s < ps; s += ss {
						if d.rng.IntN(2) == 0 {
							copy(chosen[s:s+ss], prev[s:s+ss])
						}
					}
				}
				pg = chosen
			}
		}
		copy(res[p*ps:], pg)
	}
	return res
}
