package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/wormspace/wormspace/worm"
	"github.com/wormspace/wormspace/worm/paxos"
)

var (
	bal  = paxos.Ballot{Round: 7, Node: 0xfeedfacecafebeef}
	high = paxos.Ballot{Round: 9, Node: 0x1234}
)

func val(n int, seed byte) []byte {
	v := make([]byte, n)
	for i := range v {
		v[i] = seed + byte(i)
	}
	return v
}

// sampleRequests covers every kind, empty and maximum-size values and
// batches.
func sampleRequests() map[string]*paxos.Request {
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = val(i*3, byte(i))
	}
	return map[string]*paxos.Request{
		"prepare":        {Kind: paxos.KindPrepare, Seg: 3, Off: 17, Ballot: bal},
		"prepare-meta":   {Kind: paxos.KindPrepare, Seg: 1 << 60, Off: worm.MetaOffset, Ballot: bal},
		"prepare-seg":    {Kind: paxos.KindPrepareSeg, Seg: 12, Ballot: bal},
		"accept":         {Kind: paxos.KindAccept, Seg: 3, Off: 17, Ballot: bal, Values: [][]byte{[]byte("hello")}},
		"accept-unsafe":  {Kind: paxos.KindAccept, Seg: 3, Off: 2, Values: [][]byte{[]byte("yes")}},
		"accept-empty":   {Kind: paxos.KindAccept, Seg: 3, Off: 1, Ballot: bal, Values: [][]byte{{}}},
		"accept-max":     {Kind: paxos.KindAccept, Seg: 3, Off: 1, Ballot: bal, Values: [][]byte{val(DefaultMaxValue, 1)}},
		"accept-batch":   {Kind: paxos.KindAccept, Seg: 4, Off: 100, Ballot: bal, Values: batch},
		"accept-4max":    {Kind: paxos.KindAccept, Seg: 4, Ballot: bal, Values: [][]byte{val(DefaultMaxValue, 1), val(DefaultMaxValue, 2), val(DefaultMaxValue, 3), val(DefaultMaxValue, 4)}},
		"decide":         {Kind: paxos.KindDecide, Seg: 5, Off: 6, Ballot: bal, Count: 64},
		"read":           {Kind: paxos.KindRead, Seg: 5, Off: 6},
		"trim":           {Kind: paxos.KindTrim, Seg: ^uint64(0)},
		"listen":         {Kind: paxos.KindListen, Seg: 8},
		"unlisten":       {Kind: paxos.KindUnlisten, Seg: 8},
		"status":         {Kind: paxos.KindStatus},
		"notify-as-req":  {Kind: paxos.KindNotify, Seg: 1, Off: 2, Count: 3},
		"all-fields-max": {Kind: paxos.KindAccept, Seg: ^uint64(0), Off: ^uint32(0), Ballot: paxos.Ballot{Round: ^uint64(0), Node: ^uint64(0)}, Count: ^uint32(0), Values: [][]byte{{0xff}}},
	}
}

func sampleResponses() map[string]*paxos.Response {
	regs := make([]paxos.RegState, 1000)
	for i := range regs {
		regs[i] = paxos.RegState{Off: uint32(i * 2), Accepted: paxos.Ballot{Round: uint64(i + 1), Node: 5}, HasValue: true, Decided: i%3 == 0, Value: val(i%50, byte(i))}
	}
	results := make([]paxos.RegResult, 64)
	for i := range results {
		switch i % 3 {
		case 0:
			results[i] = paxos.RegResult{Status: paxos.StatusOK}
		case 1:
			results[i] = paxos.RegResult{Status: paxos.StatusNack, Promised: high, Accepted: bal, HasValue: true}
		case 2:
			results[i] = paxos.RegResult{Status: paxos.StatusDecided, Accepted: bal, HasValue: true, Value: val(i, 9)}
		}
	}
	return map[string]*paxos.Response{
		"promise":          {Kind: paxos.KindPrepare, Status: paxos.StatusOK, Promised: bal, Reg: paxos.RegState{Off: 17}},
		"promise-accepted": {Kind: paxos.KindPrepare, Status: paxos.StatusOK, Promised: bal, Reg: paxos.RegState{Off: 17, Accepted: high, HasValue: true, Value: []byte("v")}},
		"promise-empty-v":  {Kind: paxos.KindPrepare, Status: paxos.StatusOK, Promised: bal, Reg: paxos.RegState{Off: 0, HasValue: true, Value: []byte{}}},
		"prepare-nack":     {Kind: paxos.KindPrepare, Status: paxos.StatusNack, Promised: high},
		"prepare-seg":      {Kind: paxos.KindPrepareSeg, Status: paxos.StatusOK, Promised: bal, Regs: regs, Contended: []uint32{1, 5, 999, worm.MetaOffset}},
		"prepare-seg-none": {Kind: paxos.KindPrepareSeg, Status: paxos.StatusOK, Promised: bal},
		"accepted":         {Kind: paxos.KindAccept, Status: paxos.StatusOK, Results: []paxos.RegResult{{Status: paxos.StatusOK}}},
		"accept-nack":      {Kind: paxos.KindAccept, Status: paxos.StatusOK, Results: []paxos.RegResult{{Status: paxos.StatusNack, Promised: high}}},
		"accept-decided":   {Kind: paxos.KindAccept, Status: paxos.StatusOK, Results: []paxos.RegResult{{Status: paxos.StatusDecided, Accepted: bal, HasValue: true, Value: val(DefaultMaxValue, 3)}}},
		"accept-batch":     {Kind: paxos.KindAccept, Status: paxos.StatusOK, Results: results},
		"accept-invalid":   {Kind: paxos.KindAccept, Status: paxos.StatusInvalid, Text: "accept without values"},
		"read-empty":       {Kind: paxos.KindRead, Status: paxos.StatusOK, Reg: paxos.RegState{Off: 6}},
		"read-decided":     {Kind: paxos.KindRead, Status: paxos.StatusOK, Reg: paxos.RegState{Off: 6, Accepted: bal, HasValue: true, Decided: true, Value: []byte("chosen")}},
		"read-trimmed":     {Kind: paxos.KindRead, Status: paxos.StatusTrimmed},
		"read-range":       {Kind: paxos.KindRead, Status: paxos.StatusOutOfRange},
		"trim":             {Kind: paxos.KindTrim, Status: paxos.StatusOK},
		"error":            {Kind: paxos.KindAccept, Status: paxos.StatusError, Text: "disk full"},
		"notify":           {Kind: paxos.KindNotify, Seg: 1 << 40, Off: 3, Count: 5},
		"listen":           {Kind: paxos.KindListen, Status: paxos.StatusOK},
		"status":           {Kind: paxos.KindStatus, Status: paxos.StatusOK, Text: `{"acceptor":1,"syncs":12}` + strings.Repeat(" ", 5000)},
		"everything": {Kind: paxos.KindPrepareSeg, Status: paxos.StatusNack, Promised: high,
			Reg: paxos.RegState{Off: 1, Accepted: bal, HasValue: true, Value: []byte("x")}, Regs: regs[:3],
			Contended: []uint32{2}, Results: results[:4], Seg: 1, Off: 2, Count: 3, Text: "all"},
	}
}

func equalRequest(a, b *paxos.Request) bool {
	if a.Kind != b.Kind || a.Seg != b.Seg || a.Off != b.Off || a.Ballot != b.Ballot || a.Count != b.Count || len(a.Values) != len(b.Values) {
		return false
	}
	for i := range a.Values {
		if !bytes.Equal(a.Values[i], b.Values[i]) {
			return false
		}
	}
	return true
}

// equalValue also compares nil-ness, which the encoding preserves for
// register values.
func equalValue(a, b []byte) bool { return bytes.Equal(a, b) && (a == nil) == (b == nil) }

func equalReg(a, b *paxos.RegState) bool {
	return a.Off == b.Off && a.Accepted == b.Accepted && a.HasValue == b.HasValue && a.Decided == b.Decided && equalValue(a.Value, b.Value)
}

func equalResponse(a, b *paxos.Response) bool {
	if a.Kind != b.Kind || a.Status != b.Status || a.Promised != b.Promised || !equalReg(&a.Reg, &b.Reg) ||
		len(a.Regs) != len(b.Regs) || len(a.Contended) != len(b.Contended) || len(a.Results) != len(b.Results) ||
		a.Seg != b.Seg || a.Off != b.Off || a.Count != b.Count || a.Text != b.Text {
		return false
	}
	for i := range a.Regs {
		if !equalReg(&a.Regs[i], &b.Regs[i]) {
			return false
		}
	}
	for i := range a.Contended {
		if a.Contended[i] != b.Contended[i] {
			return false
		}
	}
	for i := range a.Results {
		x, y := &a.Results[i], &b.Results[i]
		if x.Status != y.Status || x.Promised != y.Promised || x.Accepted != y.Accepted || x.HasValue != y.HasValue || !equalValue(x.Value, y.Value) {
			return false
		}
	}
	return true
}

// splitFrame checks a single encoded frame's header and returns it.
func splitFrame(t testing.TB, b []byte) Frame {
	t.Helper()
	r := NewReader(bytes.NewReader(b), 0)
	f, err := r.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if _, err := r.Next(); err == nil {
		t.Fatalf("a second frame after one encoded frame")
	}
	return f
}

func TestRequestRoundTrip(t *testing.T) {
	// Decode every sample into the same Request, so slice reuse across
	// kinds is exercised too.
	var got paxos.Request
	for name, req := range sampleRequests() {
		t.Run(name, func(t *testing.T) {
			b := AppendRequest([]byte("prefix"), 42, req)
			if !bytes.HasPrefix(b, []byte("prefix")) {
				t.Fatal("AppendRequest clobbered dst")
			}
			if len(b)-6 != RequestSize(req) {
				t.Fatalf("RequestSize %d, encoded %d", RequestSize(req), len(b)-6)
			}
			f := splitFrame(t, b[6:])
			if f.Type != FrameRequest || f.ID != 42 {
				t.Fatalf("header %v %d", f.Type, f.ID)
			}
			if err := DecodeRequest(f.Payload, 0, &got); err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			if !equalRequest(&got, req) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, req)
			}
		})
	}
}

func TestResponseRoundTrip(t *testing.T) {
	var got paxos.Response
	for name, resp := range sampleResponses() {
		t.Run(name, func(t *testing.T) {
			for _, push := range []bool{false, true} {
				var b []byte
				if push {
					b = AppendPush(nil, resp)
				} else {
					b = AppendResponse(nil, 1<<63, resp)
				}
				f := splitFrame(t, b)
				if push && (f.Type != FramePush || f.ID != 0) || !push && (f.Type != FrameResponse || f.ID != 1<<63) {
					t.Fatalf("header %v %d", f.Type, f.ID)
				}
				if err := DecodeResponse(f.Payload, 0, &got); err != nil {
					t.Fatalf("DecodeResponse: %v", err)
				}
				if !equalResponse(&got, resp) {
					t.Fatalf("round trip:\n got %+v\nwant %+v", got, resp)
				}
			}
		})
	}
}

// TestDecodeAliasing pins the ownership contract: values alias the
// payload and cannot be grown into the next field.
func TestDecodeAliasing(t *testing.T) {
	req := &paxos.Request{Kind: paxos.KindAccept, Ballot: bal, Values: [][]byte{[]byte("ab"), []byte("cd")}}
	b := AppendRequest(nil, 1, req)
	var got paxos.Request
	if err := DecodeRequest(b[HeaderSize:], 0, &got); err != nil {
		t.Fatal(err)
	}
	if &got.Values[0][0] != &b[HeaderSize+requestFixed+4] {
		t.Error("value does not alias the payload")
	}
	if cap(got.Values[0]) != 2 {
		t.Errorf("value capacity %d, want it clipped to 2", cap(got.Values[0]))
	}
	_ = append(got.Values[0], 'X')
	if string(got.Values[1]) != "cd" {
		t.Error("appending to one value overwrote the next")
	}
}

// TestDecodeClearsStale: decoding into a used Response leaves nothing of
// the previous message behind.
func TestDecodeClearsStale(t *testing.T) {
	var got paxos.Response
	full := sampleResponses()["everything"]
	if err := DecodeResponse(AppendResponse(nil, 1, full)[HeaderSize:], 0, &got); err != nil {
		t.Fatal(err)
	}
	small := &paxos.Response{Kind: paxos.KindTrim}
	if err := DecodeResponse(AppendResponse(nil, 1, small)[HeaderSize:], 0, &got); err != nil {
		t.Fatal(err)
	}
	if !equalResponse(&got, small) {
		t.Fatalf("stale fields: %+v", got)
	}
}

func TestTruncatedEverywhere(t *testing.T) {
	var req paxos.Request
	for name, r := range sampleRequests() {
		if RequestSize(r) > 1<<16 {
			continue // quadratic; the big ones are covered by the limit tests
		}
		p := AppendRequest(nil, 1, r)[HeaderSize:]
		for i := range len(p) {
			if err := DecodeRequest(p[:i], 0, &req); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s truncated at %d/%d: err %v, want ErrMalformed", name, i, len(p), err)
			}
		}
	}
	var resp paxos.Response
	for name, r := range sampleResponses() {
		p := AppendResponse(nil, 1, r)[HeaderSize:]
		if len(p) > 1<<16 {
			continue
		}
		for i := range len(p) {
			if err := DecodeResponse(p[:i], 0, &resp); !errors.Is(err, ErrMalformed) {
				t.Fatalf("%s truncated at %d/%d: err %v, want ErrMalformed", name, i, len(p), err)
			}
		}
	}
	// Whole frames cut anywhere: the Reader reports an unexpected EOF (or a
	// clean EOF at offset 0).
	b := AppendRequest(nil, 9, sampleRequests()["accept-batch"])
	for i := range len(b) {
		_, err := NewReader(bytes.NewReader(b[:i]), 0).Next()
		if i == 0 && err != io.EOF || i > 0 && !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("frame cut at %d: %v", i, err)
		}
	}
}

func TestTrailingBytes(t *testing.T) {
	for name, r := range sampleRequests() {
		p := append(AppendRequest(nil, 1, r)[HeaderSize:], 0)
		if err := DecodeRequest(p, 0, new(paxos.Request)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("%s: %v", name, err)
		}
	}
	for name, r := range sampleResponses() {
		p := append(AppendResponse(nil, 1, r)[HeaderSize:], 0)
		if err := DecodeResponse(p, 0, new(paxos.Response)); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "trailing") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestMalformedPayloads(t *testing.T) {
	accept := AppendRequest(nil, 1, &paxos.Request{Kind: paxos.KindAccept, Ballot: bal, Values: [][]byte{[]byte("abc")}})[HeaderSize:]
	mut := func(b []byte, f func([]byte)) []byte {
		c := append([]byte(nil), b...)
		f(c)
		return c
	}
	reqCases := []struct {
		name string
		p    []byte
		want error
	}{
		{"kind 0", mut(accept, func(b []byte) { b[0] = 0 }), ErrMalformed},
		{"kind unknown", mut(accept, func(b []byte) { b[0] = 200 }), ErrMalformed},
		{"huge value count", mut(accept, func(b []byte) { le.PutUint32(b[33:], 0xffffffff) }), ErrMalformed},
		{"value count one too many", mut(accept, func(b []byte) { le.PutUint32(b[33:], 2) }), ErrMalformed},
		{"value length past end", mut(accept, func(b []byte) { le.PutUint32(b[37:], 4) }), ErrMalformed},
		{"huge value length", mut(accept, func(b []byte) { le.PutUint32(b[37:], 0xffffffff) }), ErrValueTooLarge},
		{"empty", nil, ErrMalformed},
	}
	for _, c := range reqCases {
		if err := DecodeRequest(c.p, 0, new(paxos.Request)); !errors.Is(err, c.want) {
			t.Errorf("request %s: err %v, want %v", c.name, err, c.want)
		}
	}
	if err := DecodeRequest(accept, 2, new(paxos.Request)); !errors.Is(err, ErrValueTooLarge) {
		t.Errorf("value over a small limit: %v", err)
	}

	seg := AppendResponse(nil, 1, &paxos.Response{Kind: paxos.KindPrepareSeg, Promised: bal, Regs: []paxos.RegState{{Off: 1, HasValue: true, Value: []byte("v")}}, Contended: []uint32{4}})[HeaderSize:]
	// layout: kind status sec | promised 16 | u32 nregs @19 | off @23 flags @27 vlen @28 value @32 | u32 ncont @33 | off @37
	acc := AppendResponse(nil, 1, &paxos.Response{Kind: paxos.KindAccept, Results: []paxos.RegResult{{Status: paxos.StatusDecided, Value: []byte("w")}}})[HeaderSize:]
	// layout: kind status sec | u32 n @3 | status @7 flags @8 | vlen @9 | value @13
	respCases := []struct {
		name string
		p    []byte
		want error
	}{
		{"kind 0", mut(seg, func(b []byte) { b[0] = 0 }), ErrMalformed},
		{"kind unknown", mut(seg, func(b []byte) { b[0] = 99 }), ErrMalformed},
		{"status unknown", mut(seg, func(b []byte) { b[1] = 99 }), ErrMalformed},
		{"section unknown", mut(seg, func(b []byte) { b[2] |= 0x80 }), ErrMalformed},
		{"huge reg count", mut(seg, func(b []byte) { le.PutUint32(b[19:], 0xffffffff) }), ErrMalformed},
		{"reg count too many", mut(seg, func(b []byte) { le.PutUint32(b[19:], 4) }), ErrMalformed},
		{"reg flags unknown", mut(seg, func(b []byte) { b[27] |= 0x40 }), ErrMalformed},
		{"reg value too large", mut(seg, func(b []byte) { le.PutUint32(b[28:], DefaultMaxValue+1) }), ErrValueTooLarge},
		{"huge contended count", mut(seg, func(b []byte) { le.PutUint32(b[33:], 0x40000000) }), ErrMalformed},
		{"huge result count", mut(acc, func(b []byte) { le.PutUint32(b[3:], 0xffffffff) }), ErrMalformed},
		{"result status unknown", mut(acc, func(b []byte) { b[7] = 42 }), ErrMalformed},
		{"result flags unknown", mut(acc, func(b []byte) { b[8] = 0xff }), ErrMalformed},
		{"result value past end", mut(acc, func(b []byte) { le.PutUint32(b[9:], 2) }), ErrMalformed},
		{"empty", nil, ErrMalformed},
	}
	for _, c := range respCases {
		if err := DecodeResponse(c.p, 0, new(paxos.Response)); !errors.Is(err, c.want) {
			t.Errorf("response %s: err %v, want %v", c.name, err, c.want)
		}
	}
	// The layout comments above are right: the unmodified payloads decode.
	if err := DecodeResponse(seg, 0, new(paxos.Response)); err != nil {
		t.Fatal(err)
	}
	if err := DecodeResponse(acc, 0, new(paxos.Response)); err != nil {
		t.Fatal(err)
	}
}

// TestHugeCountsDoNotAllocate: a count field claiming billions of items
// is refused before anything proportional to it is allocated.
func TestHugeCountsDoNotAllocate(t *testing.T) {
	p := make([]byte, requestFixed)
	p[0] = byte(paxos.KindAccept)
	le.PutUint32(p[33:], 0xffffffff)
	var req paxos.Request
	allocs := testing.AllocsPerRun(100, func() {
		if DecodeRequest(p, 0, &req) == nil {
			t.Fatal("accepted")
		}
	})
	// The error itself allocates a few small objects; a slice of 4G
	// entries would be one allocation of 96 GiB and crash first.
	if allocs > 4 {
		t.Errorf("%v allocations for a refused count", allocs)
	}
}

func TestErrorFrame(t *testing.T) {
	b := AppendErrorFrame(nil, CodeAuth, strings.Repeat("x", 5000))
	f := splitFrame(t, b)
	if f.Type != FrameErr || f.ID != 0 {
		t.Fatalf("header %v %d", f.Type, f.ID)
	}
	re, err := DecodeError(f.Payload)
	if err != nil {
		t.Fatal(err)
	}
	if re.Code != CodeAuth || len(re.Text) != maxErrorText || !errors.Is(re, ErrAuth) {
		t.Fatalf("got %v (%d bytes)", re, len(re.Text))
	}
	if _, err := DecodeError(nil); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty error payload: %v", err)
	}
	re, _ = DecodeError([]byte{200, 'h', 'i'})
	if re.Code != CodeOther || re.Text != "hi" {
		t.Fatalf("unknown code: %+v", re)
	}
	for _, c := range []struct {
		err  error
		code Code
	}{
		{ErrAuth, CodeAuth}, {&VersionError{1, 2}, CodeVersion}, {fmt.Errorf("x: %w", ErrValueTooLarge), CodeFrameTooLarge},
		{malformed("x"), CodeMalformed}, {ErrShutdown, CodeShutdown}, {errors.New("other"), CodeOther},
	} {
		if got := CodeOf(c.err); got != c.code {
			t.Errorf("CodeOf(%v) = %v, want %v", c.err, got, c.code)
		}
		if c.code != CodeOther && !errors.Is(&RemoteError{Code: c.code}, errors.Unwrap(fmt.Errorf("%w", sentinelOf(c.code)))) {
			t.Errorf("RemoteError{%v} does not match its sentinel", c.code)
		}
	}
}

func sentinelOf(c Code) error {
	return map[Code]error{CodeAuth: ErrAuth, CodeVersion: ErrVersion, CodeFrameTooLarge: ErrFrameTooLarge, CodeMalformed: ErrMalformed, CodeShutdown: ErrShutdown}[c]
}
