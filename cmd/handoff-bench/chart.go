//go:build linux

package main

import (
	"io"
	"math"
	"os"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
	"gonum.org/v1/plot/vg/vgsvg"
)

// Chart size.
const (
	chartPanelWidth = 4 * vg.Inch
	chartHeight     = 8 * vg.Inch
	chartBarWidth   = 24 * vg.Millimeter / 2
	chartDPI        = 110
)

// writeChart draws one panel per workload and measure: throughput on top,
// p99 below, one bar per server, each panel with its own scale. It writes
// base.png and base.svg.
func writeChart(rows []runResult, workloads, servers []string, base string) error {
	tput := make([]*plot.Plot, len(workloads))
	p99 := make([]*plot.Plot, len(workloads))
	for i, wl := range workloads {
		tput[i] = barPlot(rows, wl, servers, wl+": requests/s", func(r runResult) float64 { return r.ReqPerSec })
		p99[i] = barPlot(rows, wl, servers, wl+": p99 latency, ms", func(r runResult) float64 {
			return float64(r.Load.P99.Microseconds()) / 1000
		})
	}
	render := func(c vg.CanvasWriterTo, path string) error {
		t := draw.Tiles{Rows: 2, Cols: len(workloads), PadX: 6 * vg.Millimeter, PadY: 6 * vg.Millimeter,
			PadTop: 3 * vg.Millimeter, PadBottom: 3 * vg.Millimeter, PadLeft: 3 * vg.Millimeter, PadRight: 3 * vg.Millimeter}
		plots := [][]*plot.Plot{tput, p99}
		canvases := plot.Align(plots, t, draw.New(c))
		for j := range plots {
			for i, p := range plots[j] {
				p.Draw(canvases[j][i])
			}
		}
		return writeCanvas(c, path)
	}
	w := vg.Length(max(len(workloads), 1)) * chartPanelWidth
	if err := render(vgimg.PngCanvas{Canvas: vgimg.NewWith(vgimg.UseWH(w, chartHeight), vgimg.UseDPI(chartDPI))}, base+".png"); err != nil {
		return err
	}
	return render(vgsvg.New(w, chartHeight), base+".svg")
}

func writeCanvas(c io.WriterTo, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// barPlot is one panel: a bar per server, for one workload. A server
// without a result for the workload gets no bar.
func barPlot(rows []runResult, workload string, servers []string, title string, value func(runResult) float64) *plot.Plot {
	p := plot.New()
	p.Title.Text = title
	p.Y.Min = 0
	p.NominalX(servers...)
	p.X.Tick.Label.Rotation = math.Pi / 6
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop
	p.Add(plotter.NewGrid())
	top := 0.0
	for i, s := range servers {
		r, ok := findRow(rows, s, workload)
		if !ok {
			continue
		}
		bars, err := plotter.NewBarChart(plotter.Values{value(r)}, chartBarWidth)
		if err != nil {
			continue // a NaN or infinite value: no bar
		}
		top = max(top, value(r))
		bars.XMin = float64(i)
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(i)
		p.Add(bars)
	}
	if top > 0 {
		p.Y.Max = 1.08 * top // room above the tallest bar
	}
	return p
}
