package compare

import (
	"bytes"
	"fmt"
	"hash/fnv"
	"html"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// canvas is what a chart draws on: an SVG document or a PNG image, so
// both files show the same picture.
type canvas interface {
	line(x1, y1, x2, y2 float64, c color.RGBA, w float64, dashed bool)
	rect(x, y, w, h float64, c color.RGBA)
	circle(x, y, r float64, c color.RGBA)
	// text draws s with its baseline at y; anchor is start, middle or end.
	text(x, y float64, s, anchor string, c color.RGBA)
}

const chartW, chartH = 860, 520

type svgCanvas struct{ b bytes.Buffer }

func newSVG() *svgCanvas {
	s := &svgCanvas{}
	fmt.Fprintf(&s.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="monospace" font-size="12">`+"\n", chartW, chartH, chartW, chartH)
	fmt.Fprintf(&s.b, `<rect x="0" y="0" width="%d" height="%d" fill="white"/>`+"\n", chartW, chartH)
	return s
}

func hexc(c color.RGBA) string { return fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B) }

func (s *svgCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, w float64, dashed bool) {
	d := ""
	if dashed {
		d = ` stroke-dasharray="6,4"`
	}
	fmt.Fprintf(&s.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"%s/>`+"\n", x1, y1, x2, y2, hexc(c), w, d)
}
func (s *svgCanvas) rect(x, y, w, h float64, c color.RGBA) {
	fmt.Fprintf(&s.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`+"\n", x, y, w, h, hexc(c))
}
func (s *svgCanvas) circle(x, y, r float64, c color.RGBA) {
	fmt.Fprintf(&s.b, `<circle cx="%.1f" cy="%.1f" r="%.1f" fill="%s"/>`+"\n", x, y, r, hexc(c))
}
func (s *svgCanvas) text(x, y float64, t, anchor string, c color.RGBA) {
	fmt.Fprintf(&s.b, `<text x="%.1f" y="%.1f" text-anchor="%s" fill="%s">%s</text>`+"\n", x, y, anchor, hexc(c), html.EscapeString(t))
}
func (s *svgCanvas) bytes() []byte { return append(s.b.Bytes(), "</svg>\n"...) }

type pngCanvas struct{ img *image.RGBA }

func newPNG() *pngCanvas {
	p := &pngCanvas{img: image.NewRGBA(image.Rect(0, 0, chartW, chartH))}
	draw.Draw(p.img, p.img.Bounds(), image.White, image.Point{}, draw.Src)
	return p
}

func (p *pngCanvas) dot(x, y, w float64, c color.RGBA) {
	h := w / 2
	for yy := int(math.Round(y - h)); yy <= int(math.Round(y+h-0.5)); yy++ {
		for xx := int(math.Round(x - h)); xx <= int(math.Round(x+h-0.5)); xx++ {
			p.img.SetRGBA(xx, yy, c)
		}
	}
}

func (p *pngCanvas) line(x1, y1, x2, y2 float64, c color.RGBA, w float64, dashed bool) {
	n := math.Hypot(x2-x1, y2-y1)
	steps := int(n*2) + 1
	for i := 0; i <= steps; i++ {
		t := float64(i) / float64(steps)
		if dashed && int(t*n)%10 >= 6 {
			continue
		}
		p.dot(x1+(x2-x1)*t, y1+(y2-y1)*t, max(w, 1), c)
	}
}
func (p *pngCanvas) rect(x, y, w, h float64, c color.RGBA) {
	draw.Draw(p.img, image.Rect(int(math.Round(x)), int(math.Round(y)), int(math.Round(x+w)), int(math.Round(y+h))), image.NewUniform(c), image.Point{}, draw.Src)
}
func (p *pngCanvas) circle(x, y, r float64, c color.RGBA) {
	for yy := int(y - r); yy <= int(y+r); yy++ {
		for xx := int(x - r); xx <= int(x+r); xx++ {
			if math.Hypot(float64(xx)-x, float64(yy)-y) <= r {
				p.img.SetRGBA(xx, yy, c)
			}
		}
	}
}
func (p *pngCanvas) text(x, y float64, t, anchor string, c color.RGBA) {
	t = strings.ReplaceAll(t, "µ", "u") // basicfont is ASCII only
	d := &font.Drawer{Dst: p.img, Src: image.NewUniform(c), Face: basicfont.Face7x13}
	w := float64(d.MeasureString(t).Round())
	switch anchor {
	case "middle":
		x -= w / 2
	case "end":
		x -= w
	}
	d.Dot = fixed.P(int(math.Round(x)), int(math.Round(y)))
	d.DrawString(t)
}
func (p *pngCanvas) bytes() ([]byte, error) {
	var b bytes.Buffer
	err := png.Encode(&b, p.img)
	return b.Bytes(), err
}

var (
	black = color.RGBA{0, 0, 0, 255}
	grey  = color.RGBA{200, 200, 200, 255}
	dark  = color.RGBA{90, 90, 90, 255}
)

// variantColors are the colours of configuration variants (see
// VariantSep), distinct from the four configurations'.
var variantColors = []color.RGBA{
	{148, 103, 189, 255}, // purple
	{140, 86, 75, 255},   // brown
	{227, 119, 194, 255}, // pink
	{188, 189, 34, 255},  // olive
	{23, 190, 207, 255},  // cyan
}

// palette per configuration.
func colorOf(cfg string) color.RGBA {
	if v := variantKnobs(cfg); v != "" {
		// A variant: a colour of its own, the same in every plot of
		// the run and across runs.
		h := fnv.New32a()
		h.Write([]byte(cfg))
		return variantColors[h.Sum32()%uint32(len(variantColors))]
	}
	switch cfg {
	case HostKernel:
		return color.RGBA{31, 119, 180, 255}
	case HostNetstack:
		return color.RGBA{255, 127, 14, 255}
	case VMKernel:
		return color.RGBA{44, 160, 44, 255}
	case VMNetstack:
		return color.RGBA{214, 39, 40, 255}
	case Spec:
		return color.RGBA{127, 127, 127, 255}
	}
	return black
}

const (
	plotL, plotR, plotT, plotB = 80.0, chartW - 190.0, 50.0, chartH - 60.0
)

// logAxis maps values in [lo,hi] (rounded out to decades) to pixels.
type logAxis struct{ lo, hi float64 }

func newLogAxis(vals []float64) logAxis {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, v := range vals {
		if v > 0 {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	if math.IsInf(lo, 1) {
		lo, hi = 1, 10
	}
	return logAxis{math.Floor(math.Log10(lo)), math.Max(math.Ceil(math.Log10(hi)), math.Floor(math.Log10(lo))+1)}
}

func (a logAxis) frac(v float64) float64 { return (math.Log10(v) - a.lo) / (a.hi - a.lo) }

func si(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}

// floorLabelH is the height a floor label's text takes above its
// baseline, with a little room.
const floorLabelH = 12

// curveChart draws p50 latency against throughput, one line per
// configuration through its client counts, with the echo floors as
// horizontal lines.
func curveChart(c canvas, rep *Report, wl string) {
	var xs, ys []float64
	series := map[string][]Row{}
	var cfgs []string
	for _, x := range rep.Rows {
		if x.Workload != wl || x.OpsPerSec.Median <= 0 {
			continue
		}
		if !slices.Contains(cfgs, x.Config) {
			cfgs = append(cfgs, x.Config)
		}
		series[x.Config] = append(series[x.Config], x)
		xs = append(xs, x.OpsPerSec.Median)
		ys = append(ys, x.P50us.Median)
	}
	var floors []Row
	for _, x := range rep.Rows {
		if x.Workload == EchoWorkload && x.P50us.Median > 0 {
			floors = append(floors, x)
			ys = append(ys, x.P50us.Median)
		}
	}
	ax, ay := newLogAxis(xs), newLogAxis(ys)
	px := func(v float64) float64 { return plotL + ax.frac(v)*(plotR-plotL) }
	py := func(v float64) float64 { return plotB - ay.frac(v)*(plotB-plotT) }
	c.text(chartW/2, 24, fmt.Sprintf("%s: p50 latency vs throughput (closed loop, clients swept; medians)", wl), "middle", black)
	for d := ax.lo; d <= ax.hi; d++ {
		v := math.Pow(10, d)
		c.line(px(v), plotT, px(v), plotB, grey, 1, false)
		c.text(px(v), plotB+18, si(v), "middle", dark)
	}
	for d := ay.lo; d <= ay.hi; d++ {
		v := math.Pow(10, d)
		c.line(plotL, py(v), plotR, py(v), grey, 1, false)
		c.text(plotL-6, py(v)+4, si(v), "end", dark)
	}
	c.line(plotL, plotB, plotR, plotB, black, 1, false)
	c.line(plotL, plotT, plotL, plotB, black, 1, false)
	c.text((plotL+plotR)/2, plotB+40, "throughput, ops/s (log)", "middle", black)
	c.text(plotL-6, plotT-10, "p50 µs (log)", "start", black)
	// Floor labels sit above their lines; one that would overprint a
	// label already placed (floors close together, as a variant's and
	// its base's often are), or have another floor's line run through
	// its text, moves up until it is clear. Moves only go up, so this
	// ends.
	lineYs := make([]float64, len(floors))
	for i, f := range floors {
		lineYs[i] = py(f.P50us.Median)
		c.line(plotL, lineYs[i], plotR, lineYs[i], colorOf(f.Config), 1, true)
	}
	var placed []float64
	for i, f := range floors {
		ly := lineYs[i] - 4
		for moved := true; moved; {
			moved = false
			for _, p := range placed {
				if math.Abs(ly-p) < floorLabelH {
					ly, moved = p-floorLabelH, true
				}
			}
			for j, y := range lineYs {
				if j != i && y > ly-floorLabelH && y < ly+2 {
					ly, moved = y-4, true
				}
			}
		}
		placed = append(placed, ly)
		c.text(plotR-4, ly, "echo floor "+f.Config, "end", colorOf(f.Config))
	}
	ly := plotT + 10
	var labels pointLabels
	for _, cfg := range cfgs {
		col := colorOf(cfg)
		pts := series[cfg]
		slices.SortFunc(pts, func(a, b Row) int { return a.Clients + a.Rate - b.Clients - b.Rate })
		for i, p := range pts {
			x, y := px(p.OpsPerSec.Median), py(p.P50us.Median)
			if i > 0 {
				q := pts[i-1]
				c.line(px(q.OpsPerSec.Median), py(q.P50us.Median), x, y, col, 2, cfg == Spec)
			}
			c.circle(x, y, 4, col)
			label := fmt.Sprintf("c%d", p.Clients)
			if p.Rate > 0 {
				label = fmt.Sprintf("@%s", si(float64(p.Rate)))
			}
			lx, lyy, anchor := labels.place(x, y, label)
			c.text(lx, lyy, label, anchor, dark)
		}
		c.line(plotR+15, ly-4, plotR+40, ly-4, col, 3, cfg == Spec)
		ly = legendLabel(c, ly, cfg)
	}
}

// pointLabels places the client-count labels of a curve chart's points
// so that none overprints another: points of two configurations close
// together (a variant and its base, or the spec's three, which sit on
// top of each other) would otherwise write their labels over each other.
type pointLabels struct{ boxes [][4]float64 } // x0, y0, x1, y1 of each placed label

// Text metrics of the PNG's basicfont.Face7x13 (the SVG's 12px monospace
// is about as wide).
const labelCharW, labelAscent, labelDescent = 7, 10, 3

// place returns where to write s for the point at (x, y): right and above
// it if that is clear, else the first clear spot of right-below,
// left-above, left-below, further up, further down; if none is clear, the
// one overlapping placed labels least.
func (l *pointLabels) place(x, y float64, s string) (lx, ly float64, anchor string) {
	w := float64(len(s) * labelCharW)
	type spot struct {
		x, y   float64
		anchor string
	}
	spots := []spot{
		{x + 6, y - 6, "start"}, {x + 6, y + 14, "start"},
		{x - 6, y - 6, "end"}, {x - 6, y + 14, "end"},
		{x + 6, y - 20, "start"}, {x + 6, y + 28, "start"},
	}
	best, bestOverlap := 0, math.Inf(1)
	for i, sp := range spots {
		b := labelBox(sp.x, sp.y, w, sp.anchor)
		overlap := 0.0
		for _, o := range l.boxes {
			overlap += boxOverlap(b, o)
		}
		if overlap < bestOverlap {
			best, bestOverlap = i, overlap
		}
		if overlap == 0 {
			break
		}
	}
	sp := spots[best]
	l.boxes = append(l.boxes, labelBox(sp.x, sp.y, w, sp.anchor))
	return sp.x, sp.y, sp.anchor
}

// labelBox is the box of a text of width w with its baseline at y.
func labelBox(x, y, w float64, anchor string) [4]float64 {
	if anchor == "end" {
		x -= w
	}
	return [4]float64{x, y - labelAscent, x + w, y + labelDescent}
}

// boxOverlap is the area two boxes share.
func boxOverlap(a, b [4]float64) float64 {
	w := math.Min(a[2], b[2]) - math.Max(a[0], b[0])
	h := math.Min(a[3], b[3]) - math.Max(a[1], b[1])
	if w <= 0 || h <= 0 {
		return 0
	}
	return w * h
}

// barChart draws, per workload, one bar per configuration with value(x)
// (a ratio to host-kernel); a line marks 1.0.
func barChart(c canvas, rep *Report, title string, pick func(Row) bool, value func(Row) float64) {
	var wls, cfgs []string
	vals := map[string]map[string]float64{}
	maxv := 1.0
	for _, x := range rep.Rows {
		// The raw floors over each path are bars too; the spec floor's
		// ratios (no network at all) would dwarf everything else.
		if x.Floor && !floorWorkload(x.Workload) || !pick(x) || value(x) <= 0 {
			continue
		}
		if !slices.Contains(wls, x.Workload) {
			wls = append(wls, x.Workload)
		}
		if !slices.Contains(cfgs, x.Config) {
			cfgs = append(cfgs, x.Config)
		}
		if vals[x.Workload] == nil {
			vals[x.Workload] = map[string]float64{}
		}
		vals[x.Workload][x.Config] = value(x)
		maxv = math.Max(maxv, value(x))
	}
	slices.SortFunc(cfgs, func(a, b string) int { return slices.Index(Configs, a) - slices.Index(Configs, b) })
	top := math.Ceil(maxv*1.1*2) / 2
	py := func(v float64) float64 { return plotB - v/top*(plotB-plotT) }
	c.text(chartW/2, 24, title, "middle", black)
	step := 0.5
	if top > 5 {
		step = math.Ceil(top / 10)
	}
	for v := 0.0; v <= top+1e-9; v += step {
		c.line(plotL, py(v), plotR, py(v), grey, 1, false)
		c.text(plotL-6, py(v)+4, fmt.Sprintf("%.1f", v), "end", dark)
	}
	c.line(plotL, plotB, plotR, plotB, black, 1, false)
	c.line(plotL, plotT, plotL, plotB, black, 1, false)
	c.line(plotL, py(1), plotR, py(1), black, 1, true)
	if len(wls) == 0 {
		c.text(chartW/2, chartH/2, "no data", "middle", black)
		return
	}
	gw := (plotR - plotL) / float64(len(wls))
	bw := gw * 0.8 / float64(max(len(cfgs), 1))
	for i, wl := range wls {
		x0 := plotL + float64(i)*gw + gw*0.1
		for j, cfg := range cfgs {
			v, ok := vals[wl][cfg]
			if !ok {
				continue
			}
			x := x0 + float64(j)*bw
			c.rect(x+1, py(v), bw-2, plotB-py(v), colorOf(cfg))
			c.text(x+bw/2, py(v)-4, fmt.Sprintf("%.2f", v), "middle", dark)
		}
		c.text(plotL+float64(i)*gw+gw/2, plotB+18, wl, "middle", black)
	}
	ly := plotT + 10
	for _, cfg := range cfgs {
		c.rect(plotR+15, ly-10, 25, 10, colorOf(cfg))
		ly = legendLabel(c, ly, cfg)
	}
}

// legendLabel writes cfg's name in the legend at ly and returns where the
// next entry goes: a variant's knobs go one per line under its base, so
// that they fit beside the plot.
func legendLabel(c canvas, ly float64, cfg string) float64 {
	c.text(plotR+46, ly, baseConfig(cfg), "start", black)
	if v := variantKnobs(cfg); v != "" {
		for _, kv := range strings.Split(v, ",") {
			ly += 14
			c.text(plotR+52, ly, "+"+kv, "start", dark)
		}
	}
	return ly + 20
}

// throughputBars charts every configuration's throughput relative to
// host-kernel with clients clients, and the bulk floor's (one connection):
// the throughput each path allows.
func throughputBars(c canvas, rep *Report, clients int) {
	barChart(c, rep, fmt.Sprintf("throughput relative to host-kernel, %d clients; raw-stream: one connection (higher is better)", clients),
		func(x Row) bool { return (x.Clients == clients || x.Workload == StreamWorkload) && x.Rate == 0 },
		func(x Row) float64 { return x.TputRatio })
}

// latencyBars charts p50 latency relative to host-kernel with clients
// clients, the echo floor's included (the bulk floor's p50 is queueing in
// a full pipe, not a request's latency).
func latencyBars(c canvas, rep *Report, clients int) {
	barChart(c, rep, fmt.Sprintf("p50 latency relative to host-kernel, %d client(s) (lower is better)", clients),
		func(x Row) bool { return x.Clients == clients && x.Rate == 0 && x.Workload != StreamWorkload },
		func(x Row) float64 { return x.P50Ratio })
}

// writePlots writes every chart as SVG and PNG and returns the file names.
func writePlots(rep *Report, dir string) ([]string, error) {
	type chart struct {
		name string
		draw func(canvas)
	}
	var charts []chart
	var wls []string
	for _, x := range rep.Rows {
		if !floorWorkload(x.Workload) && !slices.Contains(wls, x.Workload) {
			wls = append(wls, x.Workload)
		}
	}
	for _, wl := range wls {
		charts = append(charts, chart{"curve-" + wl, func(c canvas) { curveChart(c, rep, wl) }})
	}
	maxC, minC := 0, math.MaxInt
	for _, x := range rep.Rows {
		if !x.Floor && x.Rate == 0 && !floorWorkload(x.Workload) {
			maxC, minC = max(maxC, x.Clients), min(minC, x.Clients)
		}
	}
	charts = append(charts,
		chart{"overhead-throughput", func(c canvas) { throughputBars(c, rep, maxC) }},
		chart{"overhead-latency", func(c canvas) { latencyBars(c, rep, minC) }},
	)
	var files []string
	for _, ch := range charts {
		s, p := newSVG(), newPNG()
		ch.draw(s)
		ch.draw(p)
		name := strings.ReplaceAll(ch.name, "/", "_")
		if err := os.WriteFile(filepath.Join(dir, name+".svg"), s.bytes(), 0o644); err != nil {
			return nil, err
		}
		b, err := p.bytes()
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(dir, name+".png"), b, 0o644); err != nil {
			return nil, err
		}
		files = append(files, name+".svg", name+".png")
	}
	return files, nil
}
