package load

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Series is one line of a chart.
type Series struct {
	Name string
	X, Y []float64
}

// LineChart is a line chart rendered as standalone SVG, so the benchmark
// document needs no plotting tool.
type LineChart struct {
	Title, XLabel, YLabel string
	Series                []Series
	// Points marks every data point (for few points).
	Points bool
}

// BarChart is a grouped bar chart: one group per category, one bar per
// series in each group.
type BarChart struct {
	Title, YLabel string
	Categories    []string
	Series        []Series // Y by category; X unused
}

const (
	svgW, svgH                   = 900, 440
	padL, padR, padT, padB       = 70, 300, 40, 55
	plotW, plotH                 = svgW - padL - padR, svgH - padT - padB
	fontAttrs                    = `font-family="sans-serif" font-size="12"`
	gridColor, axisColor, txtCol = "#e0e0e0", "#444", "#222"
)

var palette = []string{"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"}

// niceTicks returns round tick values covering [lo, hi].
func niceTicks(lo, hi float64, n int) []float64 {
	if hi <= lo {
		hi = lo + 1
	}
	raw := (hi - lo) / float64(n)
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	step := mag
	for _, m := range []float64{1, 2, 5, 10} {
		if m*mag >= raw {
			step = m * mag
			break
		}
	}
	var out []float64
	for v := math.Floor(lo/step) * step; ; v += step {
		out = append(out, v)
		if v >= hi-step*1e-9 {
			return out
		}
	}
}

func fmtTick(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 1:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2g", v)
	}
}

type svgDoc struct{ b strings.Builder }

func (d *svgDoc) open(title string) {
	fmt.Fprintf(&d.b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" %s>`+"\n", svgW, svgH, svgW, svgH, fontAttrs)
	fmt.Fprintf(&d.b, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgW, svgH)
	fmt.Fprintf(&d.b, `<text x="%d" y="24" font-size="15" font-weight="bold" fill="%s">%s</text>`+"\n", padL, txtCol, html.EscapeString(title))
}

func (d *svgDoc) text(x, y float64, anchor, s string, extra string) {
	fmt.Fprintf(&d.b, `<text x="%.1f" y="%.1f" text-anchor="%s" fill="%s" %s>%s</text>`+"\n", x, y, anchor, txtCol, extra, html.EscapeString(s))
}

func (d *svgDoc) line(x1, y1, x2, y2 float64, color string, width float64) {
	fmt.Fprintf(&d.b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="%.1f"/>`+"\n", x1, y1, x2, y2, color, width)
}

// yAxis draws horizontal grid lines and labels for ticks, and the y label.
func (d *svgDoc) yAxis(ticks []float64, y func(float64) float64, label string) {
	for _, t := range ticks {
		d.line(padL, y(t), padL+plotW, y(t), gridColor, 1)
		d.text(padL-6, y(t)+4, "end", fmtTick(t), "")
	}
	fmt.Fprintf(&d.b, `<text transform="translate(18 %d) rotate(-90)" text-anchor="middle" fill="%s">%s</text>`+"\n", padT+plotH/2, txtCol, html.EscapeString(label))
	d.line(padL, padT, padL, padT+plotH, axisColor, 1)
	d.line(padL, padT+plotH, padL+plotW, padT+plotH, axisColor, 1)
}

func (d *svgDoc) legend(names []string) {
	for i, n := range names {
		y := float64(padT + 10 + 20*i)
		c := palette[i%len(palette)]
		fmt.Fprintf(&d.b, `<rect x="%d" y="%.1f" width="14" height="4" fill="%s"/>`+"\n", padL+plotW+15, y-4, c)
		d.text(float64(padL+plotW+35), y+1, "start", n, "")
	}
}

func (d *svgDoc) close() string {
	d.b.WriteString("</svg>\n")
	return d.b.String()
}

// SVG renders the chart.
func (c LineChart) SVG() string {
	xmin, xmax, ymax := math.Inf(1), math.Inf(-1), 0.0
	for _, s := range c.Series {
		for i := range s.X {
			xmin, xmax, ymax = math.Min(xmin, s.X[i]), math.Max(xmax, s.X[i]), math.Max(ymax, s.Y[i])
		}
	}
	if math.IsInf(xmin, 0) {
		xmin, xmax = 0, 1
	}
	xmin = math.Min(xmin, 0)
	xt, yt := niceTicks(xmin, xmax, 6), niceTicks(0, ymax, 5)
	x0, x1, y1 := xt[0], xt[len(xt)-1], yt[len(yt)-1]
	px := func(v float64) float64 { return padL + (v-x0)/(x1-x0)*plotW }
	py := func(v float64) float64 { return padT + plotH - v/y1*plotH }
	var d svgDoc
	d.open(c.Title)
	d.yAxis(yt, py, c.YLabel)
	for _, t := range xt {
		d.line(px(t), padT+plotH, px(t), padT+plotH+4, axisColor, 1)
		d.text(px(t), padT+plotH+18, "middle", fmtTick(t), "")
	}
	d.text(padL+plotW/2, svgH-12, "middle", c.XLabel, "")
	var names []string
	for i, s := range c.Series {
		col := palette[i%len(palette)]
		names = append(names, s.Name)
		var pts []string
		for j := range s.X {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(s.X[j]), py(s.Y[j])))
		}
		fmt.Fprintf(&d.b, `<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		if c.Points {
			for j := range s.X {
				fmt.Fprintf(&d.b, `<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", px(s.X[j]), py(s.Y[j]), col)
			}
		}
	}
	d.legend(names)
	return d.close()
}

// SVG renders the chart.
func (c BarChart) SVG() string {
	ymax := 0.0
	for _, s := range c.Series {
		for _, v := range s.Y {
			ymax = math.Max(ymax, v)
		}
	}
	yt := niceTicks(0, ymax, 5)
	y1 := yt[len(yt)-1]
	py := func(v float64) float64 { return padT + plotH - v/y1*plotH }
	var d svgDoc
	d.open(c.Title)
	d.yAxis(yt, py, c.YLabel)
	group := float64(plotW) / float64(max(1, len(c.Categories)))
	bar := group * 0.8 / float64(max(1, len(c.Series)))
	var names []string
	for i, s := range c.Series {
		names = append(names, s.Name)
		for j, v := range s.Y {
			if j >= len(c.Categories) {
				break
			}
			x := padL + group*float64(j) + group*0.1 + bar*float64(i)
			fmt.Fprintf(&d.b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s</title></rect>`+"\n",
				x, py(v), bar, padT+plotH-py(v), palette[i%len(palette)], html.EscapeString(c.Categories[j]), html.EscapeString(s.Name), fmtTick(v))
		}
	}
	for j, cat := range c.Categories {
		d.text(padL+group*(float64(j)+0.5), padT+plotH+18, "middle", cat, `font-size="11"`)
	}
	d.legend(names)
	return d.close()
}
