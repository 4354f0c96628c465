package compare

import (
	"slices"
	"strings"
	"testing"
)

// TestCheckGoals judges hand-made rows: only host-netstack's wormd rows
// count (not the floors, the kernel's own rows or the guests'), a variant
// is judged apart from its base, ratios count as printed (two decimals),
// and an open loop's throughput is not judged.
func TestCheckGoals(t *testing.T) {
	const variant = HostNetstack + VariantSep + "coalesce_acks=false"
	row := func(cfg, wl string, clients, rate int, tput, p50 float64) Row {
		return Row{Config: cfg, Workload: wl, Clients: clients, Rate: rate, Floor: floorWorkload(wl), StackTputRatio: tput, StackP50Ratio: p50}
	}
	rows := []Row{
		row(HostKernel, "write", 1, 0, 0, 0),
		row(HostNetstack, EchoWorkload, 1, 0, 0.2, 5), // a floor: not judged
		row(HostNetstack, "write", 1, 0, 0.78, 1.21),
		row(HostNetstack, "read", 1, 0, 0.69, 1.40),
		row(HostNetstack, "kv-put", 1, 0, 0.7, 1.43),
		row(HostNetstack, "log-append", 1, 0, 0.97, 1.304), // prints as 1.30x: met
		row(VMNetstack, "write", 1, 0, 0.3, 3),             // a guest: not judged
		row(variant, "write", 1, 0, 0.5, 1.1),
		row(HostNetstack, "write", 16, 0, 0.89, 1.07),
		row(HostNetstack, "read", 16, 0, 0.82, 1.31),
		row(HostNetstack, OpenLoop, 0, 200, 1, 1.23),
		row(HostNetstack, "write", 64, 0, 0.0, 0.0), // no kernel peer: no ratio
	}
	got := checkGoals(rows)
	type brief struct {
		cfg            string
		clients, rate  int
		n              int
		tlo, thi       float64
		plo, phi       float64
		tmiss, p50miss string
		met            bool
	}
	var b []brief
	for _, g := range got {
		b = append(b, brief{g.Config, g.Clients, g.Rate, g.Workloads, g.ThroughputMin, g.ThroughputMax, g.P50Min, g.P50Max,
			strings.Join(g.ThroughputMissed, ","), strings.Join(g.P50Missed, ","), g.Met()})
	}
	want := []brief{
		{HostNetstack, 1, 0, 4, 0.69, 0.97, 1.21, 1.43, "read", "read,kv-put", false},
		{HostNetstack, 16, 0, 2, 0.82, 0.89, 1.07, 1.31, "", "read", false},
		{HostNetstack, 0, 200, 1, 0, 0, 1.23, 1.23, "", "", true},
		{variant, 1, 0, 1, 0.5, 0.5, 1.1, 1.1, "write", "", false},
	}
	if !slices.Equal(b, want) {
		t.Fatalf("checkGoals:\n got %+v\nwant %+v", b, want)
	}

	note := goalNote(&Report{Goals: got}, "  ")
	for _, s := range []string{
		"throughput 0.7x or better, p50 within 1.3x",
		"  host-netstack, 1 client (4 workloads): throughput 0.69–0.97x, p50 1.21–1.43x: missed, throughput (read); p50 (read, kv-put)\n",
		"  host-netstack, 16 clients (2 workloads): throughput 0.82–0.89x, p50 1.07–1.31x: missed, p50 (read)\n",
		"  host-netstack, @200/s (1 workload): p50 1.23x: met\n",
	} {
		if !strings.Contains(note, s) {
			t.Errorf("goal note lacks %q:\n%s", s, note)
		}
	}
	if goalNote(&Report{}, "  ") != "" {
		t.Error("a goal note without goal checks")
	}
}
