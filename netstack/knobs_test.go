package netstack_test

import (
	"errors"
	"fmt"
	"runtime"
	"testing"

	"github.com/wormspace/wormspace/netstack"
)

func TestParseKnobs(t *testing.T) {
	def := netstack.DefaultKnobs()
	if k, err := netstack.ParseKnobs(""); err != nil || k != def {
		t.Fatalf("empty: %+v %v, want the defaults", k, err)
	}
	want := def
	want.Dispatch = netstack.DispatchRecvMMsg
	want.CoalesceACKs = false // implied: gVisor's links report no bursts
	want.HostGSO = false      // implied: nor do they add virtio-net headers
	want.GRO = true
	want.Processors = 1
	want.CongestionControl = "cubic"
	want.SendBuffer = netstack.BufferRange{Min: 4096, Default: 65536, Max: 131072}
	for _, s := range []string{
		"dispatch=recvmmsg,gro=true,processors=1,congestion_control=cubic,send_buffer=4096/65536/131072",
		` dispatch=recvmmsg, gro=true ,processors=1,congestion_control=cubic,send_buffer=4096/65536/131072`,
		`{"dispatch":"recvmmsg","gro":true,"processors":1,"congestion_control":"cubic","send_buffer":{"min":4096,"default":65536,"max":131072}}`,
	} {
		k, err := netstack.ParseKnobs(s)
		if err != nil || k != want {
			t.Fatalf("ParseKnobs(%q) = %+v, %v; want %+v", s, k, err, want)
		}
	}
	// Overrides is the inverse: it names exactly what differs.
	o := want.Overrides()
	if o != "coalesce_acks=false,congestion_control=cubic,dispatch=recvmmsg,gro=true,host_gso=false,processors=1,send_buffer=4096/65536/131072" {
		t.Fatalf("Overrides = %q", o)
	}
	if k, err := netstack.ParseKnobs(o); err != nil || k != want {
		t.Fatalf("ParseKnobs(Overrides()) = %+v, %v", k, err)
	}
	if o := def.Overrides(); o != "" {
		t.Fatalf("defaults' Overrides = %q, want empty", o)
	}
	for _, bad := range []string{
		"dispatch",                          // no value
		"dispach=readv",                     // misspelt: must not silently measure the defaults
		"processors=many",                   // wrong type
		"congestion_control=vegas",          // not offered
		"rack=true,sack=false",              // RACK needs SACK
		"dispatch=inline,gro=true",          // GRO needs fdbased
		"send_buffer=1/2",                   // not a range, not a number
		"send_buffer=9000/4096/8192",        // min > default
		"go_procs=-1",                       // negative
		"dispatch=readv,coalesce_acks=true", // bursts come from this package's links only
		"busy_poll_us=-1",                   // negative
		"dispatch=recvmmsg,busy_poll_us=50", // this package's links only
		`{"dispatch":`,
	} {
		if _, err := netstack.ParseKnobs(bad); !errors.Is(err, netstack.ErrBadOption) {
			t.Errorf("ParseKnobs(%q) = %v, want ErrBadOption", bad, err)
		}
	}
}

// TestApplyGoProcs: the go_procs knob sets the process's GOMAXPROCS, 0
// leaves it alone, and the previous value comes back so a caller can log
// it.
func TestApplyGoProcs(t *testing.T) {
	was := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(was)
	k, err := netstack.ParseKnobs("go_procs=0")
	if err != nil {
		t.Fatal(err)
	}
	if prev := k.ApplyGoProcs(); prev != 0 || runtime.GOMAXPROCS(0) != was {
		t.Fatalf("go_procs=0 changed GOMAXPROCS (%d -> %d) or reported %d", was, runtime.GOMAXPROCS(0), prev)
	}
	want := was + 1
	k, err = netstack.ParseKnobs(fmt.Sprintf("go_procs=%d", want))
	if err != nil {
		t.Fatal(err)
	}
	if prev := k.ApplyGoProcs(); prev != was || runtime.GOMAXPROCS(0) != want {
		t.Fatalf("go_procs=%d: GOMAXPROCS %d, previous reported %d (was %d)", want, runtime.GOMAXPROCS(0), prev, was)
	}
}

// TestKnobsWith: overrides layer (a run's, then a configuration's), the
// later setting of a knob wins, and a bad layer leaves the knobs as they
// were.
func TestKnobsWith(t *testing.T) {
	run, err := netstack.ParseKnobs("coalesce_acks=false,go_procs=2")
	if err != nil {
		t.Fatal(err)
	}
	k, err := run.With("go_procs=3,busy_poll_us=50")
	if err != nil {
		t.Fatal(err)
	}
	if k.CoalesceACKs || k.GoProcs != 3 || k.BusyPollMicros != 50 {
		t.Fatalf("layered knobs %s", k)
	}
	if got, want := k.Overrides(), "busy_poll_us=50,coalesce_acks=false,go_procs=3"; got != want {
		t.Fatalf("Overrides() = %q, want %q", got, want)
	}
	if k2, err := k.With(`{"go_procs":1}`); err != nil || k2.GoProcs != 1 || k2.CoalesceACKs {
		t.Fatalf("JSON layer: %s %v", k2, err)
	}
	for _, bad := range []string{"dispatch=readv", "go_procs=x", "nosuch=1"} {
		k2, err := k.With(bad)
		if !errors.Is(err, netstack.ErrBadOption) || k2 != k {
			t.Errorf("With(%q) = %s, %v; want ErrBadOption and the knobs unchanged", bad, k2, err)
		}
	}
}

// TestOwnLinkKnobsFollowDispatch: coalesce_acks and host_gso are on by
// default and work only with this package's links (they report bursts,
// they add the virtio-net header), so choosing one of gVisor's links
// without naming the knob turns it off, naming both is an error, and an
// own link keeps it.
func TestOwnLinkKnobsFollowDispatch(t *testing.T) {
	for _, c := range []struct {
		name  string
		get   func(netstack.Knobs) bool
		cases map[string]bool
		named string // a gVisor link with the knob named: refused
	}{
		{"coalesce_acks", func(k netstack.Knobs) bool { return k.CoalesceACKs }, map[string]bool{
			"dispatch=readv":                 false,
			`{"dispatch":"mmap"}`:            false,
			"dispatch=inline":                true,
			"dispatch=netpoll,go_procs=2":    true,
			"dispatch=recvmmsg,processors=1": false,
			"coalesce_acks=false":            false,
		}, `{"dispatch":"readv","Coalesce_ACKs":true}`},
		{"host_gso", func(k netstack.Knobs) bool { return k.HostGSO }, map[string]bool{
			"dispatch=readv":                    false,
			"dispatch=recvmmsg,gro=true":        false,
			"dispatch=inline":                   true,
			"dispatch=netpoll":                  true,
			"host_gso=false":                    false,
			"dispatch=mmap,coalesce_acks=false": false,
		}, "dispatch=recvmmsg,host_gso=true"},
	} {
		if !c.get(netstack.DefaultKnobs()) {
			t.Errorf("%s is off by default", c.name)
		}
		for s, want := range c.cases {
			k, err := netstack.ParseKnobs(s)
			if err != nil || c.get(k) != want {
				t.Errorf("ParseKnobs(%q): %s %v, %v; want %v", s, c.name, c.get(k), err, want)
			}
		}
		if _, err := netstack.ParseKnobs(c.named); !errors.Is(err, netstack.ErrBadOption) {
			t.Errorf("ParseKnobs(%q): %v, want ErrBadOption", c.named, err)
		}
	}
}
