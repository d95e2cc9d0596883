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
	got := markdownTable(rows)
	want := `| server | workload | req/s | p50 | p99 | split max/min | failed | CPU µs/req master | CPU µs/req workers | CPU µs/req total |
| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
| reuseport | new-conn | 9000 | 17.39ms | 69.57ms | 1.50 | 0 | – | 41.4 | 41.4 |
| handoff-rr | new-conn | 8551 | 225µs | 900µs | 1.00 | 0 | 17.3 | 52.1 | 69.4 |
| single | keep-alive | 77026 | 500.00ms | 2.00s | – | 0 | – | 13.6 | 13.6 |
| handoff-ll | skewed | 10 | 250µs | 1.00ms | ∞ | 0 | 1.0 | 2.0 | 3.0 |
| node-rr | new-conn | failed: node-rr: not ready / oops | | | | | | | |
`
	if got != want {
		t.Errorf("markdownTable:\n%s\nwant:\n%s", got, want)
	}
}

func TestComputeTargets(t *testing.T) {
	t.Parallel()
	rows := []runResult{
		row("reuseport", "new-conn", 10000, 10*time.Millisecond, 0, 40),
		row("handoff-rr", "new-conn", 9600, 10*time.Millisecond, 4, 40),
		row("handoff-ll", "new-conn", 9000, 10*time.Millisecond, 4, 40),
		row("node-rr", "new-conn", 3000, 10*time.Millisecond, 90, 300),
		row("reuseport", "keep-alive", 80000, time.Millisecond, 0, 14),
		row("handoff-rr", "keep-alive", 78000, time.Millisecond, 0, 14),
		row("reuseport", "skewed", 5000, 100*time.Millisecond, 0, 300),
		row("handoff-rr", "skewed", 5000, 90*time.Millisecond, 10, 300),
		row("handoff-ll", "skewed", 5000, 60*time.Millisecond, 10, 300),
	}
	got := map[string]target{}
	for _, tg := range computeTargets(rows) {
		got[tg.Name] = tg
	}
	for _, tc := range []struct {
		name  string
		value float64
		pass  bool
	}{
		{"new-conn req/s: handoff-rr ÷ reuseport", 0.96, true},
		{"new-conn req/s: handoff-ll ÷ reuseport", 0.90, false},
		{"keep-alive req/s: handoff-rr ÷ reuseport", 0.975, false},
		{"new-conn req/s: handoff-rr ÷ node-rr", 3.2, true},
		{"new-conn CPU/conn: handoff-rr total ÷ reuseport total", 1.1, true},
		{"new-conn CPU/conn: handoff-rr master share of its total", 100 * 4.0 / 44, true},
		{"skewed p99: handoff-ll ÷ reuseport", 0.6, true},
		{"skewed p99: handoff-ll ÷ handoff-rr", 60.0 / 90, true},
	} {
		tg, ok := got[tc.name]
		if !ok {
			t.Errorf("no target %q", tc.name)
			continue
		}
		if !tg.Measured || tg.Value < tc.value-1e-9 || tg.Value > tc.value+1e-9 || tg.Pass != tc.pass {
			t.Errorf("%s: got value %g pass %v measured %v, want %g pass %v", tc.name, tg.Value, tg.Pass, tg.Measured, tc.value, tc.pass)
		}
	}

	// Without the reuseport runs, the ratios against it are not measured.
	for _, tg := range computeTargets(rows[1:4]) {
		if strings.Contains(tg.Name, "reuseport") && tg.Measured {
			t.Errorf("%s measured without a reuseport run", tg.Name)
		}
	}
	table := targetsTable(computeTargets(nil))
	if strings.Count(table, "not run") != 8 {
		t.Errorf("targets table without runs:\n%s", table)
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
	for _, want := range []string{"Test CPU, 2 CPUs", "| handoff-rr | new-conn | 9600 |", "| new-conn req/s: handoff-rr ÷ reuseport | 0.96× | ≥ 0.95× | pass |", "chart.png"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	back, err := readReport(filepath.Join(dir, "results.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(back.Runs) != 3 || back.Runs[1].Load.P99 != 10*time.Millisecond || len(back.Targets) == 0 {
		t.Errorf("results.json read back: %+v", back)
	}
	var raw map[string]any
	b, _ := os.ReadFile(filepath.Join(dir, "extra.json"))
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Errorf("extra.json: %v", err)
	}
}
