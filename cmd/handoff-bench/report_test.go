//go:build linux

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// row makes a table row as fill would.
func row(server, workload string, rps float64, p99 time.Duration, masterUs, workersUs float64, perWorker ...uint64) runResult {
	r := runResult{Server: server, Workload: workload, ReqPerSec: rps, Load: loadResult{Requests: 1000, P50: p99 / 4, P99: p99},
		HasMaster: masterUs > 0, MasterUsReq: masterUs, WorkersUsReq: workersUs, TotalUsReq: masterUs + workersUs, Served: 1000,
		PerWorker: map[int]uint64{}}
	for i, n := range perWorker {
		r.PerWorker[100+i] = n
	}
	u := usage{served: r.PerWorker}
	r.SplitMax, r.SplitMin = u.split()
	return r
}

func TestMarkdownTable(t *testing.T) {
	t.Parallel()
	rows := []runResult{
		row("reuseport", "new-conn", 9000.4, 69570*time.Microsecond, 0, 41.44, 600, 400),
		row("handoff-rr", "new-conn", 8551, 900*time.Microsecond, 17.3, 52.06, 500, 500),
		row("single", "keep-alive", 77026, 2*time.Second, 0, 13.6, 1000),
		row("handoff-ll", "skewed", 10, time.Millisecond, 1, 2, 10, 0),
		{Server: "node-rr", Workload: "new-conn", Error: "node-rr: not ready | oops"},
	}
	rows[4].Load.Requests = 0
	// perf counted handoff-rr's master and workers, and reuseport's
	// workers; a zero is shown, not taken for missing.
	rows[0].fillPerf(&perfUsage{workers: perfCounts{Syscalls: 24000, ContextSwitches: 1500}})
	rows[1].fillPerf(&perfUsage{master: &perfCounts{Syscalls: 3000, ContextSwitches: 0}, workers: perfCounts{Syscalls: 20000, ContextSwitches: 2000}})
	got := markdownTable(rows)
	want := `| server | workload | req/s | p50 | p99 | split max/min | failed | CPU µs/req master | CPU µs/req workers | CPU µs/req total | syscalls/req master | syscalls/req workers | syscalls/req total | ctxsw/req master | ctxsw/req workers | ctxsw/req total |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| reuseport | new-conn | 9000 | 17.39ms | 69.57ms | 1.50 | 0 | – | 41.4 | 41.4 | – | 24.0 | 24.0 | – | 1.50 | 1.50 |
| handoff-rr | new-conn | 8551 | 225µs | 900µs | 1.00 | 0 | 17.3 | 52.1 | 69.4 | 3.0 | 20.0 | 23.0 | 0.00 | 2.00 | 2.00 |
| single | keep-alive | 77026 | 500.00ms | 2.00s | – | 0 | – | 13.6 | 13.6 | – | – | – | – | – | – |
| handoff-ll | skewed | 10 | 250µs | 1.00ms | ∞ | 0 | 1.0 | 2.0 | 3.0 | – | – | – | – | – | – |
| node-rr | new-conn | failed: node-rr: not ready / oops | | | | | | | | | | | | | |
`
	if got != want {
		t.Errorf("markdownTable:\n%s\nwant:\n%s", got, want)
	}
	for i, line := range strings.Split(strings.TrimSpace(got), "\n") {
		if n := strings.Count(line, "|"); n != len(tableColumns)+3 {
			t.Errorf("table line %d has %d |, want %d: %s", i, n, len(tableColumns)+3, line)
		}
	}
}

func TestFillPerf(t *testing.T) {
	t.Parallel()
	f := func(v float64) *float64 { return &v }
	for _, tc := range []struct {
		name      string
		hasMaster bool
		served    uint64
		counted   *perfUsage
		sys, cs   perReq
	}{
		{"not counted", true, 1000, nil, perReq{}, perReq{}},
		{"no requests", false, 0, &perfUsage{workers: perfCounts{Syscalls: 5}}, perReq{}, perReq{}},
		{"workers only", false, 1000, &perfUsage{workers: perfCounts{Syscalls: 20000, ContextSwitches: 500}},
			perReq{Workers: f(20), Total: f(20)}, perReq{Workers: f(0.5), Total: f(0.5)}},
		{"master and workers", true, 1000, &perfUsage{master: &perfCounts{Syscalls: 4000, ContextSwitches: 0}, workers: perfCounts{Syscalls: 20000, ContextSwitches: 500}},
			perReq{Master: f(4), Workers: f(20), Total: f(24)}, perReq{Master: f(0), Workers: f(0.5), Total: f(0.5)}},
		{"master not counted", true, 1000, &perfUsage{workers: perfCounts{Syscalls: 20000}},
			perReq{Workers: f(20)}, perReq{Workers: f(0)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runResult{HasMaster: tc.hasMaster, Served: tc.served}
			r.fillPerf(tc.counted)
			eq := func(what string, got, want *float64) {
				t.Helper()
				switch {
				case (got == nil) != (want == nil):
					t.Errorf("%s = %v, want %v", what, fmtPerReq(got, 3), fmtPerReq(want, 3))
				case got != nil && (*got < *want-1e-9 || *got > *want+1e-9):
					t.Errorf("%s = %g, want %g", what, *got, *want)
				}
			}
			eq("syscalls master", r.SyscallsReq.Master, tc.sys.Master)
			eq("syscalls workers", r.SyscallsReq.Workers, tc.sys.Workers)
			eq("syscalls total", r.SyscallsReq.Total, tc.sys.Total)
			eq("ctxsw master", r.CtxswReq.Master, tc.cs.Master)
			eq("ctxsw workers", r.CtxswReq.Workers, tc.cs.Workers)
			eq("ctxsw total", r.CtxswReq.Total, tc.cs.Total)
			if (tc.counted == nil) != (r.PerfWorkers == nil) {
				t.Errorf("PerfWorkers = %+v with counts %+v", r.PerfWorkers, tc.counted)
			}
		})
	}
}

// ratioRows are a run of every server the ratios compare, with syscalls
// and context switches counted.
func ratioRows() []runResult {
	rows := []runResult{
		row("reuseport", "new-conn", 10000, 10*time.Millisecond, 0, 40),
		row("handoff-rr", "new-conn", 9600, 10*time.Millisecond, 4, 40),
		row("handoff-ll", "new-conn", 9000, 10*time.Millisecond, 4, 40),
		row("node-rr", "new-conn", 3000, 10*time.Millisecond, 90, 300),
		row("reuseport", "new-conn-c4", 5000, 400*time.Microsecond, 0, 50),
		row("handoff-rr", "new-conn-c4", 4400, 600*time.Microsecond, 10, 50),
		row("reuseport", "new-conn-c1", 2000, 400*time.Microsecond, 0, 50),
		row("handoff-rr", "new-conn-c1", 1500, 600*time.Microsecond, 10, 50),
		row("reuseport", "keep-alive", 80000, time.Millisecond, 0, 14),
		row("handoff-rr", "keep-alive", 78000, time.Millisecond, 0, 14),
		row("reuseport", "skewed", 5000, 100*time.Millisecond, 0, 300),
		row("handoff-rr", "skewed", 5000, 90*time.Millisecond, 10, 300),
		row("handoff-ll", "skewed", 5000, 60*time.Millisecond, 10, 300),
		row("handoff-lr", "skewed", 5000, 45*time.Millisecond, 10, 300),
	}
	rows[0].fillPerf(&perfUsage{workers: perfCounts{Syscalls: 20000, ContextSwitches: 1000}})
	rows[1].fillPerf(&perfUsage{master: &perfCounts{Syscalls: 3000, ContextSwitches: 200}, workers: perfCounts{Syscalls: 18000, ContextSwitches: 1000}})
	return rows
}

func TestComputeRatios(t *testing.T) {
	t.Parallel()
	rows := ratioRows()
	got := map[string]ratio{}
	for _, r := range computeRatios(rows) {
		if _, dup := got[r.Name]; dup {
			t.Errorf("ratio %q twice", r.Name)
		}
		got[r.Name] = r
	}
	for _, tc := range []struct {
		name  string
		value float64
	}{
		{"new-conn req/s: handoff-rr ÷ reuseport", 0.96},
		{"new-conn req/s: handoff-ll ÷ reuseport", 0.90},
		{"new-conn-c4 req/s: handoff-rr ÷ reuseport", 0.88},
		{"new-conn-c1 p50: handoff-rr ÷ reuseport", 1.5},
		{"keep-alive req/s: handoff-rr ÷ reuseport", 0.975},
		{"new-conn req/s: handoff-rr ÷ node-rr", 3.2},
		{"new-conn CPU/conn: handoff-rr total ÷ reuseport total", 1.1},
		{"new-conn CPU/conn: handoff-rr master share of its total", 100 * 4.0 / 44},
		{"new-conn syscalls/conn: handoff-rr total ÷ reuseport total", 21.0 / 20},
		{"new-conn context switches/conn: handoff-rr total ÷ reuseport total", 1.2},
		{"skewed p99: handoff-ll ÷ reuseport", 0.6},
		{"skewed p99: handoff-ll ÷ handoff-rr", 60.0 / 90},
		{"skewed p99: handoff-lr ÷ reuseport", 0.45},
		{"skewed p99: handoff-lr ÷ handoff-rr", 0.5},
	} {
		r, ok := got[tc.name]
		if !ok {
			t.Errorf("no ratio %q", tc.name)
			continue
		}
		delete(got, tc.name)
		if !r.Measured || r.Value < tc.value-1e-9 || r.Value > tc.value+1e-9 {
			t.Errorf("%s: got value %g measured %v, want %g", tc.name, r.Value, r.Measured, tc.value)
		}
	}
	for name := range got {
		t.Errorf("unexpected ratio %q", name)
	}

	// Without the reuseport runs, the ratios against it are not measured.
	for _, r := range computeRatios(rows[1:4]) {
		if strings.Contains(r.Name, "reuseport") && r.Measured {
			t.Errorf("%s measured without a reuseport run", r.Name)
		}
	}
	// Without perf, the syscall and context switch ratios are not
	// measured and nothing else changes.
	noPerf := ratioRows()
	for i := range noPerf {
		noPerf[i].SyscallsReq, noPerf[i].CtxswReq = perReq{}, perReq{}
	}
	for _, r := range computeRatios(noPerf) {
		perfRatio := strings.Contains(r.Name, "syscalls") || strings.Contains(r.Name, "context switches")
		if r.Measured == perfRatio {
			t.Errorf("without perf: %s measured = %v", r.Name, r.Measured)
		}
	}
	table := ratiosTable(computeRatios(noPerf))
	if strings.Count(table, "| – |") != 2 || !strings.Contains(table, "| new-conn CPU/conn: handoff-rr master share of its total | 9.1% |") {
		t.Errorf("ratios table without perf:\n%s", table)
	}
	// The binary grades nothing: the goals are in README.md.
	for _, word := range []string{"pass", "FAIL", "goal", "≥", "≤"} {
		if strings.Contains(table, word) {
			t.Errorf("ratios table has %q:\n%s", word, table)
		}
	}
	table = ratiosTable(computeRatios(nil))
	if strings.Count(table, "| – |") != len(computeRatios(nil)) {
		t.Errorf("ratios table without runs:\n%s", table)
	}
}

func TestPerfStatNote(t *testing.T) {
	t.Parallel()
	rows := ratioRows()
	if note := perfStatNote("", rows); strings.Contains(note, "Not counted") || strings.Contains(note, "failed") {
		t.Errorf("note with every run counted:\n%s", note)
	}
	note := perfStatNote("perf is not on PATH", nil)
	if strings.Count(note, "perf is not on PATH") != 1 {
		t.Errorf("note without perf:\n%s", note)
	}
	rows[0].PerfStatError = "workers: perf stat: boom"
	rows[4].PerfStatError = "workers: perf stat: boom"
	rows[5].PerfStatError = "master: other"
	note = perfStatNote("", rows)
	if strings.Count(note, "boom") != 1 || strings.Count(note, "other") != 1 || !strings.Contains(note, "new-conn reuseport, new-conn-c4 reuseport: workers") {
		t.Errorf("note with failed runs, each reason once:\n%s", note)
	}
}

func TestRowsPicksMedianRound(t *testing.T) {
	t.Parallel()
	rep := &report{Config: benchConfig{Servers: []string{"reuseport", "handoff-rr"}, Workloads: []string{"keep-alive", "new-conn"}}}
	for i, rps := range []float64{300, 100, 200} {
		r := row("handoff-rr", "new-conn", rps, time.Millisecond, 1, 1)
		r.Round = i + 1
		rep.Runs = append(rep.Runs, r)
	}
	rep.Runs = append(rep.Runs, row("reuseport", "keep-alive", 5, time.Millisecond, 0, 1))
	rows := rep.rows()
	if len(rows) != 2 {
		t.Fatalf("rows = %d, want 2", len(rows))
	}
	if rows[0].Workload != "keep-alive" || rows[1].ReqPerSec != 200 || rows[1].Round != 3 {
		t.Errorf("rows = %+v", rows)
	}
}

func TestWriteOutputs(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c := &config{out: dir, jsonPath: filepath.Join(dir, "extra.json")}
	rep := &report{
		Machine: machine{CPU: "Test CPU", CPUs: 2, Kernel: "6.1", Go: "go1.26"},
		Config:  benchConfig{Servers: []string{"reuseport", "handoff-rr"}, Workloads: []string{"new-conn", "skewed"}, Generator: "wrk", Burn: "3ms", BurnFrac: 0.1},
		Runs: []runResult{
			row("reuseport", "new-conn", 10000, 10*time.Millisecond, 0, 40, 5, 5),
			row("handoff-rr", "new-conn", 9600, 10*time.Millisecond, 4, 40, 5, 5),
			row("handoff-rr", "skewed", 900, 80*time.Millisecond, 4, 40, 5, 5),
		},
	}
	rep.Runs[1].fillPerf(&perfUsage{master: &perfCounts{Syscalls: 3000, ContextSwitches: 7}, workers: perfCounts{Syscalls: 20000, ContextSwitches: 9}})
	var out strings.Builder
	if err := writeOutputs(c, rep, &out); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"results.md", "results.json", "extra.json", "chart.png", "chart.svg"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
		} else if fi.Size() == 0 {
			t.Errorf("%s is empty", name)
		}
	}
	md := out.String()
	for _, want := range []string{"Test CPU, 2 CPUs", "| handoff-rr | new-conn | 9600 |", "| new-conn req/s: handoff-rr ÷ reuseport | 0.96× |", "chart.png"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	back, err := readReport(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != 3 || back.Runs[1].Load.P99 != 10*time.Millisecond || len(back.Ratios) == 0 {
		t.Errorf("results.json read back: %+v", back)
	}
	// Counted numbers come back, zeros included; uncounted ones stay nil.
	if got := back.Runs[1]; got.SyscallsReq.Total == nil || *got.SyscallsReq.Total != 23 || got.CtxswReq.Master == nil || got.PerfMaster == nil || got.PerfMaster.ContextSwitches != 7 {
		t.Errorf("perf counts read back: %+v %+v %+v", got.SyscallsReq, got.CtxswReq, got.PerfMaster)
	}
	if got := back.Runs[0]; got.SyscallsReq.Workers != nil || got.PerfWorkers != nil {
		t.Errorf("uncounted run read back with counts: %+v", got.SyscallsReq)
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "extra.json"))
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Errorf("extra.json: %v", err)
	}
}
