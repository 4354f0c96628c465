package compare

import (
	"image/color"
	"math"
	"slices"
	"strings"
	"testing"
)

// textCanvas records what a chart writes (its text), and draws nothing.
type textCanvas struct {
	texts  []placedText
	dashes []float64 // y of each horizontal dashed line
}

type placedText struct {
	x, y   float64
	s      string
	anchor string
}

func (t *textCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, w float64, dashed bool) {
	if dashed && y1 == y2 {
		t.dashes = append(t.dashes, y1)
	}
}
func (*textCanvas) rect(x, y, w, h float64, c color.RGBA) {}
func (*textCanvas) circle(x, y, r float64, c color.RGBA)  {}
func (t *textCanvas) text(x, y float64, s, anchor string, c color.RGBA) {
	t.texts = append(t.texts, placedText{x, y, s, anchor})
}

// TestCurveChartLabels: echo floors close together get labels that do
// not overprint each other, and a variant is in the legend under its
// base's name with one line per knob.
func TestCurveChartLabels(t *testing.T) {
	v := HostNetstack + VariantSep + "coalesce_acks=false+go_procs=2"
	row := func(cfg, wl string, clients int, ops, p50 float64) Row {
		return Row{Config: cfg, Workload: wl, Clients: clients, OpsPerSec: Stat{Median: ops}, P50us: Stat{Median: p50}}
	}
	rep := &Report{Rows: []Row{
		row(HostKernel, EchoWorkload, 1, 40000, 22),
		row(HostNetstack, EchoWorkload, 1, 9000, 115),
		row(v, EchoWorkload, 1, 9500, 112), // 3% apart: the same pixel row
		row(HostKernel, "write", 1, 9000, 98),
		row(HostNetstack, "write", 1, 6000, 139),
		row(v, "write", 1, 7000, 128),
	}}
	c := &textCanvas{}
	curveChart(c, rep, "write")
	var floorYs []float64
	var legend []string
	for _, tx := range c.texts {
		if strings.HasPrefix(tx.s, "echo floor ") {
			floorYs = append(floorYs, tx.y)
		}
		if tx.x > plotR {
			legend = append(legend, tx.s)
		}
	}
	if len(floorYs) != 3 {
		t.Fatalf("floor labels at %v, want 3", floorYs)
	}
	for i := range floorYs {
		for j := range i {
			if math.Abs(floorYs[i]-floorYs[j]) < 12 {
				t.Errorf("floor labels %d and %d at y %.1f and %.1f overprint", i, j, floorYs[i], floorYs[j])
			}
		}
	}
	want := []string{HostKernel, HostNetstack, HostNetstack, "+coalesce_acks=false", "+go_procs=2"}
	if !slices.Equal(legend, want) {
		t.Errorf("legend %q, want %q", legend, want)
	}
	if colorOf(v) == colorOf(HostNetstack) || colorOf(v) == black {
		t.Errorf("variant colour %v: not its own", colorOf(v))
	}
}

// TestFloorLabelsClearOfOtherFloors: a floor label is not crossed by
// another floor's line, as session 12's run had it (kernel echo 70.5 µs,
// netstack 93.5 µs: the netstack line ran through the kernel's label).
func TestFloorLabelsClearOfOtherFloors(t *testing.T) {
	row := func(cfg, wl string, ops, p50 float64) Row {
		return Row{Config: cfg, Workload: wl, Clients: 1, OpsPerSec: Stat{Median: ops}, P50us: Stat{Median: p50}}
	}
	for _, floors := range [][2]float64{{70.5, 93.5}, {70.5, 80}, {22, 115}, {375.8, 746.3}} {
		rep := &Report{Rows: []Row{
			row(HostKernel, EchoWorkload, 13000, floors[0]),
			row(HostNetstack, EchoWorkload, 10000, floors[1]),
			row(HostKernel, "write", 10000, 79),
			row(HostNetstack, "write", 7000, 127),
			row(Spec, "write", 1e6, 0.2),
		}}
		c := &textCanvas{}
		curveChart(c, rep, "write")
		var labels []float64
		for _, tx := range c.texts {
			if strings.HasPrefix(tx.s, "echo floor ") {
				labels = append(labels, tx.y)
			}
		}
		if len(labels) != 2 || len(c.dashes) < 2 {
			t.Fatalf("floors %v: labels at %v, dashed lines at %v", floors, labels, c.dashes)
		}
		for i, ly := range labels {
			for _, y := range c.dashes {
				if y > ly-floorLabelH && y < ly+2 {
					// Its own line is 4 below its baseline: outside.
					t.Errorf("floors %v: the line at y %.1f runs through label %d (baseline %.1f)", floors, y, i, ly)
				}
			}
		}
		if math.Abs(labels[0]-labels[1]) < floorLabelH {
			t.Errorf("floors %v: labels at %.1f and %.1f overprint", floors, labels[0], labels[1])
		}
	}
}

// TestCurvePointLabelsClear: the client-count labels of points close
// together (two configurations' 16-client points a few pixels apart, the
// spec's three points on top of each other) are placed so that no two
// overprint.
func TestCurvePointLabelsClear(t *testing.T) {
	row := func(cfg string, clients int, ops, p50 float64) Row {
		return Row{Config: cfg, Workload: "write", Clients: clients, OpsPerSec: Stat{Median: ops}, P50us: Stat{Median: p50}}
	}
	rep := &Report{Rows: []Row{
		row(HostKernel, 1, 11800, 72), row(HostKernel, 16, 33000, 480), row(HostKernel, 64, 47000, 1280),
		row(HostNetstack, 1, 8900, 99), row(HostNetstack, 16, 39000, 383), row(HostNetstack, 64, 47300, 1274),
		row(Spec, 1, 900000, 0.2), row(Spec, 16, 1000000, 0.25), row(Spec, 64, 1010000, 0.15),
	}}
	c := &textCanvas{}
	curveChart(c, rep, "write")
	var boxes [][4]float64
	var names []string
	for _, tx := range c.texts {
		if len(tx.s) < 2 || tx.s[0] != 'c' || strings.Trim(tx.s[1:], "0123456789") != "" {
			continue
		}
		boxes = append(boxes, labelBox(tx.x, tx.y, float64(len(tx.s)*labelCharW), tx.anchor))
		names = append(names, tx.s)
	}
	if len(boxes) != 9 {
		t.Fatalf("%d point labels (%v), want 9", len(boxes), names)
	}
	for i := range boxes {
		for j := range i {
			if a := boxOverlap(boxes[i], boxes[j]); a > 0 {
				t.Errorf("labels %s %v and %s %v overprint (%.0f px²)", names[i], boxes[i], names[j], boxes[j], a)
			}
		}
	}
}

// TestOverheadBarsFloors: the throughput bars carry the bulk floor (one
// connection, whatever the chart's client count) and the latency bars the
// echo floor, not the bulk floor's queueing; the spec floor is in neither.
func TestOverheadBarsFloors(t *testing.T) {
	row := func(cfg, wl string, clients int, floor bool, tput, p50 float64) Row {
		return Row{Config: cfg, Workload: wl, Clients: clients, Floor: floor, TputRatio: tput, P50Ratio: p50}
	}
	rep := &Report{Rows: []Row{
		row(HostKernel, EchoWorkload, 1, true, 1, 1),
		row(HostNetstack, EchoWorkload, 1, true, 0.8, 1.2),
		row(HostKernel, StreamWorkload, 1, true, 1, 1),
		row(HostNetstack, StreamWorkload, 1, true, 0.9, 1.5),
		row(Spec, "write", 1, true, 70, 0.01),
		row(Spec, "write", 64, true, 12, 0.01),
		row(HostKernel, "write", 1, false, 1, 1),
		row(HostNetstack, "write", 1, false, 0.7, 1.3),
		row(HostKernel, "write", 64, false, 1, 1),
		row(HostNetstack, "write", 64, false, 0.9, 1.1),
	}}
	labels := func(draw func(canvas)) []string {
		c := &textCanvas{}
		draw(c)
		var out []string
		for _, tx := range c.texts {
			out = append(out, tx.s)
		}
		return out
	}
	tput := labels(func(c canvas) { throughputBars(c, rep, 64) })
	lat := labels(func(c canvas) { latencyBars(c, rep, 1) })
	for _, want := range []string{StreamWorkload, "write", "0.90"} {
		if !slices.Contains(tput, want) {
			t.Errorf("throughput bars lack %q: %q", want, tput)
		}
	}
	for _, want := range []string{EchoWorkload, "write", "1.20"} {
		if !slices.Contains(lat, want) {
			t.Errorf("latency bars lack %q: %q", want, lat)
		}
	}
	if slices.Contains(tput, EchoWorkload) || slices.Contains(lat, StreamWorkload) {
		t.Errorf("a floor in the wrong chart: throughput %q, latency %q", tput, lat)
	}
	for _, l := range append(tput, lat...) {
		if l == Spec || strings.HasPrefix(l, "12.") || strings.HasPrefix(l, "70.") {
			t.Errorf("the spec floor is charted: %q", l)
		}
	}
}
