package compare

import (
	"image/color"
	"math"
	"slices"
	"strings"
	"testing"
)

// textCanvas records what a chart writes (its text), and draws nothing.
type textCanvas struct{ texts []placedText }

type placedText struct {
	x, y float64
	s    string
}

func (*textCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, w float64, dashed bool) {}
func (*textCanvas) rect(x, y, w, h float64, c color.RGBA)                             {}
func (*textCanvas) circle(x, y, r float64, c color.RGBA)                              {}
func (t *textCanvas) text(x, y float64, s, anchor string, c color.RGBA) {
	t.texts = append(t.texts, placedText{x, y, s})
}

// TestCurveChartLabels: echo floors close together get labels that do
// not overprint each other, and a variant is in the legend under its
// base's name with one line per knob.
func TestCurveChartLabels(t *testing.T) {
	v := HostNetstack + VariantSep + "coalesce_acks=true+go_procs=2"
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
	want := []string{HostKernel, HostNetstack, HostNetstack, "+coalesce_acks=true", "+go_procs=2"}
	if !slices.Equal(legend, want) {
		t.Errorf("legend %q, want %q", legend, want)
	}
	if colorOf(v) == colorOf(HostNetstack) || colorOf(v) == black {
		t.Errorf("variant colour %v: not its own", colorOf(v))
	}
}
