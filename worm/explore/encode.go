package explore

import (
	"sort"
	"strconv"
	"strings"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

// The canonical encodings below are injective on everything an acceptor or
// an Op can observe: every exported field of a message is written, with a
// label, whenever it differs from its zero value. They double as the
// human-readable form of messages in traces.

func appendBallot(b []byte, x worm.Ballot) []byte {
	b = strconv.AppendUint(b, x.Round, 10)
	b = append(b, '.')
	return strconv.AppendUint(b, x.Node, 16)
}

func appendAddr(b []byte, seg uint64, off uint32) []byte {
	return append(b, worm.Addr{Seg: seg, Off: off}.String()...)
}

// appendBytes writes a value; nil and empty are distinguished.
func appendBytes(b []byte, label string, v []byte) []byte {
	if v == nil {
		return b
	}
	b = append(b, label...)
	return strconv.AppendQuote(b, string(v))
}

func appendBallotField(b []byte, label string, x worm.Ballot) []byte {
	if x.IsZero() {
		return b
	}
	b = append(b, label...)
	return appendBallot(b, x)
}

func appendUintField(b []byte, label string, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = append(b, label...)
	return strconv.AppendUint(b, v, 10)
}

func appendRequest(b []byte, r *paxos.Request) []byte {
	b = append(b, r.Kind.String()...)
	b = append(b, ' ')
	b = appendAddr(b, r.Seg, r.Off)
	b = appendBallotField(b, " b=", r.Ballot)
	b = appendUintField(b, " n=", uint64(r.Count))
	if r.Values != nil {
		b = append(b, " ["...)
		for i, v := range r.Values {
			if i > 0 {
				b = append(b, ' ')
			}
			if v == nil {
				b = append(b, "nil"...)
			} else {
				b = strconv.AppendQuote(b, string(v))
			}
		}
		b = append(b, ']')
	}
	return b
}

func appendRegState(b []byte, g *paxos.RegState) []byte {
	b = append(b, '{')
	b = strconv.AppendUint(b, uint64(g.Off), 10)
	b = appendBallotField(b, " b=", g.Accepted)
	if g.HasValue {
		b = append(b, " has"...)
	}
	if g.Decided {
		b = append(b, " decided"...)
	}
	b = appendBytes(b, " v=", g.Value)
	return append(b, '}')
}

func appendResponse(b []byte, r *paxos.Response) []byte {
	b = append(b, r.Kind.String()...)
	b = append(b, ' ')
	b = append(b, r.Status.String()...)
	b = appendBallotField(b, " p=", r.Promised)
	if r.Reg.Off != 0 || !r.Reg.Accepted.IsZero() || r.Reg.HasValue || r.Reg.Decided || r.Reg.Value != nil {
		b = append(b, " reg="...)
		b = appendRegState(b, &r.Reg)
	}
	if len(r.Regs) > 0 {
		b = append(b, " regs=["...)
		for i := range r.Regs {
			b = appendRegState(b, &r.Regs[i])
		}
		b = append(b, ']')
	}
	if len(r.Contended) > 0 {
		b = append(b, " contended=["...)
		for i, off := range r.Contended {
			if i > 0 {
				b = append(b, ' ')
			}
			b = strconv.AppendUint(b, uint64(off), 10)
		}
		b = append(b, ']')
	}
	if len(r.Results) > 0 {
		b = append(b, " results=["...)
		for i, x := range r.Results {
			if i > 0 {
				b = append(b, ' ')
			}
			b = append(b, x.Status.String()...)
			b = appendBallotField(b, "/p=", x.Promised)
			b = appendBallotField(b, "/b=", x.Accepted)
			if x.HasValue {
				b = append(b, "/has"...)
			}
			b = appendBytes(b, "/v=", x.Value)
		}
		b = append(b, ']')
	}
	b = appendUintField(b, " seg=", r.Seg)
	b = appendUintField(b, " off=", uint64(r.Off))
	b = appendUintField(b, " count=", uint64(r.Count))
	if r.Text != "" {
		b = append(b, " text="...)
		b = strconv.AppendQuote(b, r.Text)
	}
	return b
}

func appendRecord(b []byte, r *paxos.Record) []byte {
	b = append(b, r.Kind.String()...)
	b = append(b, ' ')
	b = appendAddr(b, r.Seg, r.Off)
	b = appendBallotField(b, " b=", r.Ballot)
	return appendBytes(b, " v=", r.Value)
}

// snapshot returns the canonical key of an acceptor's state and the
// records that rebuild it (values copied).
func snapshot(a AcceptorModel) (string, []paxos.Record, error) {
	var recs []paxos.Record
	err := a.Snapshot(func(r paxos.Record) error {
		if r.Value != nil {
			r.Value = append([]byte(nil), r.Value...)
		}
		recs = append(recs, r)
		return nil
	})
	if err != nil {
		return "", nil, err
	}
	lines := make([]string, len(recs))
	for i := range recs {
		lines[i] = string(appendRecord(nil, &recs[i]))
	}
	// Sort records and keys together so that rebuilding is deterministic.
	idx := make([]int, len(recs))
	for i := range idx {
		idx[i] = i
	}
	sort.Slice(idx, func(i, j int) bool { return lines[idx[i]] < lines[idx[j]] })
	sorted := make([]paxos.Record, len(recs))
	keys := make([]string, len(recs))
	for i, k := range idx {
		sorted[i], keys[i] = recs[k], lines[k]
	}
	return strings.Join(keys, "; "), sorted, nil
}
