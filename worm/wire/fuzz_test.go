package wire

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/wormspace/wormspace/worm/paxos"
)

// fuzzMaxFrame is the frame limit under fuzzing: small, so that the
// "allocates nothing beyond the limit" property is checked cheaply.
const fuzzMaxFrame = 1 << 16

// FuzzReader: an arbitrary byte stream never panics the Reader or the
// payload decoders, and the Reader never buffers more than one frame
// within the limit.
func FuzzReader(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b), fuzzMaxFrame)
		var req paxos.Request
		var resp paxos.Response
		for {
			fr, err := r.Next()
			if cap(r.big) > fuzzMaxFrame+4 {
				t.Fatalf("reader buffer grew to %d", cap(r.big))
			}
			if err != nil {
				return
			}
			switch fr.Type {
			case FrameRequest:
				DecodeRequest(fr.Payload, 0, &req)
			case FrameResponse, FramePush:
				DecodeResponse(fr.Payload, 0, &resp)
			case FrameErr:
				DecodeError(fr.Payload)
			case FrameControl:
				var c Control
				var cr ControlReply
				DecodeControl(fr.Payload, 0, &c)
				DecodeControlReply(fr.Payload, 0, &cr)
			default:
				t.Fatalf("Next returned frame type %v", fr.Type)
			}
		}
	})
}

// FuzzRequest: DecodeRequest never panics, allocates in proportion to its
// input only, and a request it accepts re-encodes to the same bytes (the
// request encoding is canonical), so decode(encode(x)) == x.
func FuzzRequest(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		var req paxos.Request
		if err := DecodeRequest(p, 0, &req); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			if cap(req.Values) > len(p)/4 {
				t.Fatalf("allocated %d values for %d bytes", cap(req.Values), len(p))
			}
			return
		}
		again := AppendRequest(nil, 0, &req)[HeaderSize:]
		if !bytes.Equal(again, p) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", p, again)
		}
		var back paxos.Request
		if err := DecodeRequest(again, 0, &back); err != nil || !equalRequest(&back, &req) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

// FuzzResponse: as FuzzRequest for responses. The response encoding admits
// non-canonical forms (a flag announcing a zero ballot), so the property
// is decode(encode(decode(p))) == decode(p).
func FuzzResponse(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		var resp paxos.Response
		if err := DecodeResponse(p, 0, &resp); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			if cap(resp.Regs) > len(p)/minRegState || cap(resp.Results) > len(p)/minRegResult || cap(resp.Contended) > len(p)/4 {
				t.Fatalf("allocated out of proportion to %d bytes", len(p))
			}
			return
		}
		again := AppendResponse(nil, 0, &resp)[HeaderSize:]
		if len(again) > len(p) {
			t.Fatalf("re-encoding grew from %d to %d bytes", len(p), len(again))
		}
		var back paxos.Response
		if err := DecodeResponse(again, 0, &back); err != nil || !equalResponse(&back, &resp) {
			t.Fatalf("round trip: %v\n got %+v\nwant %+v", err, back, resp)
		}
	})
}

// FuzzHandshake: arbitrary bytes as a handshake message never panic the
// header reader or the message decoders; a decoded hello re-encodes to
// the same bytes.
func FuzzHandshake(f *testing.F) {
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readHSMsg(bytes.NewReader(b), maxServerHelloBody)
		if err != nil {
			if len(m.raw) > hsHeader+maxServerHelloBody {
				t.Fatalf("read %d bytes", len(m.raw))
			}
			return
		}
		switch m.typ {
		case msgClientHello:
			h, err := decodeClientHello(m)
			if err != nil {
				return
			}
			again, err := encodeClientHello(&h)
			if err != nil || !bytes.Equal(again, m.raw) {
				t.Fatalf("client hello re-encoding differs: %v\n in %x\nout %x", err, m.raw, again)
			}
		case msgServerHello:
			h, proof, err := decodeServerHello(m)
			if err != nil {
				return
			}
			again, err := encodeServerHello(&h, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			if h.Flags&FlagAuth != 0 {
				// Without the key the proof differs; compare all but it.
				again = again[:len(again)-ProofSize]
				if len(proof) != ProofSize || !bytes.Equal(again, m.raw[:len(m.raw)-ProofSize]) {
					t.Fatalf("server hello re-encoding differs")
				}
			} else if !bytes.Equal(again, m.raw) {
				t.Fatalf("server hello re-encoding differs")
			}
		case msgClientProof:
			decodeClientProof(m)
		default:
			t.Fatalf("readHSMsg returned type %d", m.typ)
		}
	})
}

// FuzzControl: DecodeControl and DecodeControlReply never panic, return
// typed errors, allocate in proportion to their input, and what they
// accept re-encodes to the same bytes (both encodings are canonical).
func FuzzControl(f *testing.F) {
	f.Fuzz(func(t *testing.T, p []byte) {
		var c Control
		if err := DecodeControl(p, 0, &c); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			if cap(c.Records) > len(p)/recordFixed {
				t.Fatalf("allocated %d records for %d bytes", cap(c.Records), len(p))
			}
		} else if again := AppendControl(nil, 0, &c)[HeaderSize:]; !bytes.Equal(again, p) {
			t.Fatalf("control re-encoding differs:\n in %x\nout %x", p, again)
		}
		var r ControlReply
		if err := DecodeControlReply(p, 0, &r); err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("untyped error %v", err)
			}
			if cap(r.Records) > len(p)/recordFixed {
				t.Fatalf("allocated %d records for %d bytes", cap(r.Records), len(p))
			}
		} else if again := AppendControlReply(nil, 0, &r)[HeaderSize:]; !bytes.Equal(again, p) {
			t.Fatalf("control reply re-encoding differs:\n in %x\nout %x", p, again)
		}
	})
}

// seedCorpus returns the seed inputs of each fuzz target, generated from
// valid encodings.
func seedCorpus() map[string][][]byte {
	seeds := map[string][][]byte{}
	var stream []byte
	reqs := sampleRequests()
	for _, name := range sortedKeys(reqs) {
		b := AppendRequest(nil, 1, reqs[name])
		if len(b) > 1<<14 {
			continue
		}
		seeds["FuzzRequest"] = append(seeds["FuzzRequest"], b[HeaderSize:])
		stream = append(stream, b...)
	}
	resps := sampleResponses()
	for _, name := range sortedKeys(resps) {
		b := AppendResponse(nil, 2, resps[name])
		if len(b) > 1<<14 {
			continue
		}
		seeds["FuzzResponse"] = append(seeds["FuzzResponse"], b[HeaderSize:])
		stream = append(stream, b...)
	}
	stream = AppendPush(stream, resps["notify"])
	for _, c := range sampleControls() {
		b := AppendControl(nil, 4, c)
		seeds["FuzzControl"] = append(seeds["FuzzControl"], b[HeaderSize:])
		stream = append(stream, b...)
	}
	for _, r := range sampleControlReplies() {
		b := AppendControlReply(nil, 4, r)
		seeds["FuzzControl"] = append(seeds["FuzzControl"], b[HeaderSize:])
		stream = append(stream, b...)
	}
	stream = AppendErrorFrame(stream, CodeAuth, "authentication required")
	seeds["FuzzReader"] = [][]byte{stream, AppendRequest(nil, 3, reqs["accept"]), le.AppendUint32(nil, 0xffffffff)}

	ch, _ := encodeClientHello(&ClientHello{Version: Version, Flags: FlagAuth, Nonce: [32]byte{1, 2, 3}, ID: "client-1", Epoch: 3})
	key := bytes.Repeat([]byte{7}, 32)
	sh, _ := encodeServerHello(&ServerHello{Flags: FlagAuth, AcceptorID: 2, Cluster: "c", SegmentSize: 1024, MaxValue: DefaultMaxValue, MaxFrame: DefaultMaxFrame, Nonce: [32]byte{4}}, ch, key)
	shNoAuth, _ := encodeServerHello(&ServerHello{AcceptorID: 2, Membership: sampleMembership()}, ch, nil)
	cp := hsFinish(append(appendHSHeader(nil, msgClientProof), make([]byte, sha256.Size)...))
	seeds["FuzzHandshake"] = [][]byte{ch, sh, shNoAuth, cp, encodeHSError(CodeVersion, "protocol version mismatch")}
	return seeds
}

func sortedKeys[V any](m map[string]V) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	sort.Strings(k)
	return k
}

// TestSeedCorpus checks that the checked-in seed corpora under
// testdata/fuzz match what seedCorpus generates (so they stay valid as the
// format evolves). WIRE_UPDATE_SEEDS=1 rewrites them.
func TestSeedCorpus(t *testing.T) {
	update := os.Getenv("WIRE_UPDATE_SEEDS") == "1"
	for target, inputs := range seedCorpus() {
		dir := filepath.Join("testdata", "fuzz", target)
		for i, in := range inputs {
			path := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", in)
			if update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with WIRE_UPDATE_SEEDS=1 to generate)", err)
			}
			if string(got) != want {
				t.Errorf("%s is stale (run with WIRE_UPDATE_SEEDS=1 to regenerate)", path)
			}
		}
	}
}
