package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// runResult is one server under one workload, as the JSON has it.
type runResult struct {
	Server    string `json:"server"`
	Workload  string `json:"workload"`
	Round     int    `json:"round"`
	Workers   int    `json:"workers"`
	Generator string `json:"generator"`

	Load      loadResult `json:"client"`
	ReqPerSec float64    `json:"req_per_sec"`
	Failed    uint64     `json:"failed"`

	// Server side, between the snapshots around the measured run.
	Served       uint64         `json:"served"`
	PerWorker    map[int]uint64 `json:"served_by_worker_pid"`
	SplitMax     uint64         `json:"split_max"`
	SplitMin     uint64         `json:"split_min"`
	HasMaster    bool           `json:"has_master"`
	MasterCPU    time.Duration  `json:"master_cpu_ns"`
	WorkersCPU   time.Duration  `json:"workers_cpu_ns"`
	MasterUsReq  float64        `json:"master_cpu_us_per_req"`
	WorkersUsReq float64        `json:"workers_cpu_us_per_req"`
	TotalUsReq   float64        `json:"total_cpu_us_per_req"`
	MasterCSReq  float64        `json:"master_ctx_switches_per_req"`
	WorkersCSReq float64        `json:"workers_ctx_switches_per_req"`

	Profile string `json:"master_cpuprofile,omitempty"`
	Error   string `json:"error,omitempty"`
}

// fill sets the derived fields from the client's and servers' numbers.
func (r *runResult) fill(res loadResult, u usage, hasMaster bool) {
	r.Load = res
	r.ReqPerSec = res.reqPerSec()
	r.Failed = res.Errors.total()
	r.Served = u.total
	r.PerWorker = u.served
	r.SplitMax, r.SplitMin = u.split()
	r.HasMaster = hasMaster
	r.MasterCPU, r.WorkersCPU = u.masterCPU, u.workerCPU
	if u.total > 0 {
		n := float64(u.total)
		r.MasterUsReq = float64(u.masterCPU.Microseconds()) / n
		r.WorkersUsReq = float64(u.workerCPU.Microseconds()) / n
		r.TotalUsReq = r.MasterUsReq + r.WorkersUsReq
		r.MasterCSReq = float64(u.masterCS) / n
		r.WorkersCSReq = float64(u.workerCS) / n
	}
}

func (r runResult) ok() bool { return r.Error == "" || r.Load.Requests > 0 }

// machine describes where the bench ran.
type machine struct {
	CPU     string `json:"cpu"`
	CPUs    int    `json:"cpus"`
	Kernel  string `json:"kernel"`
	Go      string `json:"go"`
	Wrk     string `json:"wrk,omitempty"`
	Node    string `json:"node,omitempty"`
	Virtual string `json:"virtualization,omitempty"`
}

// benchConfig is the run's configuration, as the JSON has it.
type benchConfig struct {
	Duration    string   `json:"duration"`
	Warmup      string   `json:"warmup"`
	Workers     int      `json:"workers"`
	Connections int      `json:"connections"`
	Threads     int      `json:"threads"`
	Rounds      int      `json:"rounds"`
	Burn        string   `json:"burn"`
	BurnFrac    float64  `json:"burn_fraction"`
	Servers     []string `json:"servers"`
	Workloads   []string `json:"workloads"`
	Generator   string   `json:"generator"`
	MasterProcs int      `json:"master_gomaxprocs,omitempty"`
}

// report is the whole run.
type report struct {
	Started time.Time   `json:"started"`
	Machine machine     `json:"machine"`
	Config  benchConfig `json:"config"`
	Runs    []runResult `json:"runs"`
	Targets []target    `json:"targets,omitempty"`
}

func newReport(c *config, servers []string, gen, node string) *report {
	return &report{
		Started: time.Now().UTC(),
		Machine: probeMachine(gen, node),
		Config: benchConfig{
			Duration: c.duration.String(), Warmup: c.warmup.String(), Workers: c.workers,
			Connections: c.conns, Threads: c.threads, Rounds: c.rounds,
			Burn: c.burn.String(), BurnFrac: c.burnFrac,
			Servers: servers, Workloads: c.workloads, Generator: gen, MasterProcs: c.masterProcs,
		},
	}
}

func probeMachine(gen, node string) machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		if strings.Contains(string(b), " hypervisor") {
			m.Virtual = "hypervisor"
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if gen == "wrk" {
		// wrk -v prints its version and exits 1.
		out, _ := exec.Command("wrk", "-v").CombinedOutput()
		m.Wrk = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	if node != "" {
		out, _ := exec.Command(node, "--version").Output()
		m.Node = strings.TrimSpace(string(out))
	}
	return m
}

// rows picks one run per server and workload, in workload then server
// order: with several rounds, the median by req/s.
func (rep *report) rows() []runResult {
	groups := map[[2]string][]runResult{}
	for _, r := range rep.Runs {
		k := [2]string{r.Workload, r.Server}
		groups[k] = append(groups[k], r)
	}
	var out []runResult
	for _, wl := range rep.Config.Workloads {
		for _, s := range rep.Config.Servers {
			g := groups[[2]string{wl, s}]
			if len(g) == 0 {
				continue
			}
			sort.SliceStable(g, func(i, j int) bool { return g[i].ReqPerSec < g[j].ReqPerSec })
			out = append(out, g[len(g)/2])
		}
	}
	return out
}

// find returns the table row for a server and workload.
func findRow(rows []runResult, server, workload string) (runResult, bool) {
	for _, r := range rows {
		if r.Server == server && r.Workload == workload && r.ok() {
			return r, true
		}
	}
	return runResult{}, false
}

func fmtLatency(d time.Duration) string {
	switch {
	case d <= 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2fs", d.Seconds())
}

func fmtSplit(r runResult) string {
	switch {
	case len(r.PerWorker) <= 1:
		return "–"
	case r.SplitMin == 0:
		return "∞"
	}
	return fmt.Sprintf("%.2f", float64(r.SplitMax)/float64(r.SplitMin))
}

func fmtCPU(v float64, show bool) string {
	if !show {
		return "–"
	}
	return fmt.Sprintf("%.1f", v)
}

// markdownTable renders the result rows.
func markdownTable(rows []runResult) string {
	var b strings.Builder
	b.WriteString("| server | workload | req/s | p50 | p99 | split max/min | failed | CPU µs/req master | CPU µs/req workers | CPU µs/req total |\n")
	b.WriteString("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		if !r.ok() {
			fmt.Fprintf(&b, "| %s | %s | failed: %s | | | | | | | |\n", r.Server, r.Workload, strings.ReplaceAll(r.Error, "|", "/"))
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %d | %s | %s | %s |\n",
			r.Server, r.Workload, r.ReqPerSec, fmtLatency(r.Load.P50), fmtLatency(r.Load.P99), fmtSplit(r), r.Failed,
			fmtCPU(r.MasterUsReq, r.HasMaster), fmtCPU(r.WorkersUsReq, r.Served > 0), fmtCPU(r.TotalUsReq, r.Served > 0))
	}
	return b.String()
}

// target is one of issue 6's targets, measured.
type target struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Goal     string  `json:"goal"`
	Measured bool    `json:"measured"`
	Pass     bool    `json:"pass"`
	Unit     string  `json:"unit"` // "x" or "%"
}

// computeTargets computes issue 6's ratios from the table rows. A target
// whose runs are missing is reported as not measured.
func computeTargets(rows []runResult) []target {
	var ts []target
	ratio := func(name, goal string, num, den float64, okNum, okDen bool, pass func(float64) bool) {
		t := target{Name: name, Goal: goal, Unit: "x"}
		if okNum && okDen && den > 0 {
			t.Value, t.Measured = num/den, true
			t.Pass = pass(t.Value)
		}
		ts = append(ts, t)
	}
	atLeast := func(x float64) func(float64) bool { return func(v float64) bool { return v >= x } }
	atMost := func(x float64) func(float64) bool { return func(v float64) bool { return v <= x } }

	rp, okRP := findRow(rows, "reuseport", "new-conn")
	rr, okRR := findRow(rows, "handoff-rr", "new-conn")
	ll, okLL := findRow(rows, "handoff-ll", "new-conn")
	ratio("new-conn req/s: handoff-rr ÷ reuseport", "≥ 0.95×", rr.ReqPerSec, rp.ReqPerSec, okRR, okRP, atLeast(0.95))
	ratio("new-conn req/s: handoff-ll ÷ reuseport", "≥ 0.95×", ll.ReqPerSec, rp.ReqPerSec, okLL, okRP, atLeast(0.95))

	krp, okKRP := findRow(rows, "reuseport", "keep-alive")
	krr, okKRR := findRow(rows, "handoff-rr", "keep-alive")
	ratio("keep-alive req/s: handoff-rr ÷ reuseport", "≥ 0.98×", krr.ReqPerSec, krp.ReqPerSec, okKRR, okKRP, atLeast(0.98))

	nrr, okNRR := findRow(rows, "node-rr", "new-conn")
	ratio("new-conn req/s: handoff-rr ÷ node-rr", "≥ 2.5×", rr.ReqPerSec, nrr.ReqPerSec, okRR, okNRR, atLeast(2.5))

	ratio("new-conn CPU/conn: handoff-rr total ÷ reuseport total", "≤ 1.1×", rr.TotalUsReq, rp.TotalUsReq, okRR, okRP, atMost(1.1))
	share := target{Name: "new-conn CPU/conn: handoff-rr master share of its total", Goal: "≤ 10%", Unit: "%"}
	if okRR && rr.TotalUsReq > 0 {
		share.Value, share.Measured = 100*rr.MasterUsReq/rr.TotalUsReq, true
		share.Pass = share.Value <= 10
	}
	ts = append(ts, share)

	srp, okSRP := findRow(rows, "reuseport", "skewed")
	srr, okSRR := findRow(rows, "handoff-rr", "skewed")
	sll, okSLL := findRow(rows, "handoff-ll", "skewed")
	ratio("skewed p99: handoff-ll ÷ reuseport", "≤ 0.7×", float64(sll.Load.P99), float64(srp.Load.P99), okSLL, okSRP, atMost(0.7))
	ratio("skewed p99: handoff-ll ÷ handoff-rr", "< 1×", float64(sll.Load.P99), float64(srr.Load.P99), okSLL, okSRR, func(v float64) bool { return v < 1 })
	return ts
}

func targetsTable(ts []target) string {
	var b strings.Builder
	b.WriteString("| target | measured | goal | result |\n| --- | ---: | --- | --- |\n")
	for _, t := range ts {
		val, res := "not run", "–"
		if t.Measured {
			if t.Unit == "%" {
				val = fmt.Sprintf("%.1f%%", t.Value)
			} else {
				val = fmt.Sprintf("%.2f×", t.Value)
			}
			res = "FAIL"
			if t.Pass {
				res = "pass"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", t.Name, val, t.Goal, res)
	}
	return b.String()
}

// markdown renders the whole report.
func (rep *report) markdown(chart string) string {
	rows := rep.rows()
	var b strings.Builder
	m, c := rep.Machine, rep.Config
	fmt.Fprintf(&b, "# handoff-bench, %s\n\n", rep.Started.Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Machine: %s, %d CPUs", orUnknown(m.CPU), m.CPUs)
	if m.Virtual != "" {
		b.WriteString(" (virtual machine)")
	}
	fmt.Fprintf(&b, ", Linux %s, %s", orUnknown(m.Kernel), m.Go)
	if m.Node != "" {
		fmt.Fprintf(&b, ", Node.js %s", m.Node)
	}
	b.WriteString(".\n\n")
	gen := "the built-in Go generator"
	if c.Generator == "wrk" {
		gen = "wrk (" + orUnknown(m.Wrk) + ")"
	}
	fmt.Fprintf(&b, "Load: %s, %d connections, %d threads, %s measured per run after %s of warm-up, %d round(s); "+
		"every server has %d worker processes; all traffic on 127.0.0.1, with the load generator on the same CPUs.\n\n",
		gen, c.Connections, c.Threads, c.Duration, c.Warmup, c.Rounds, c.Workers)
	b.WriteString(markdownTable(rows))
	b.WriteString("\n")
	b.WriteString("- **keep-alive**: every connection stays open for the whole run; GET / answers \"hello world\\n\".\n")
	b.WriteString("- **new-conn**: every request carries `Connection: close`, so each request is a new TCP connection (accept, handoff, close).\n")
	fmt.Fprintf(&b, "- **skewed**: half the client connections (every other %s) keep alive, the other half send `Connection: close` on every request; "+
		"each request asks for `%s` (the handler spins the CPU that long) with probability %g, else GET /. "+
		"Keep-alive connections complete many more requests than closing ones, so most requests are keep-alive: ",
		map[bool]string{true: "wrk thread", false: "connection"}[c.Generator == "wrk"], "/?burn="+c.Burn, c.BurnFrac)
	if r, ok := firstSkewed(rows); ok && r.Load.KeepAlive+r.Load.Close > 0 {
		sent := float64(r.Load.KeepAlive + r.Load.Close)
		fmt.Fprintf(&b, "in the %s run %.0f%% were keep-alive and %.1f%% burned.\n", r.Server,
			100*float64(r.Load.KeepAlive)/sent, 100*float64(r.Load.Burn)/sent)
	} else {
		b.WriteString("see the JSON for the counts.\n")
	}
	b.WriteString("- Latency is the client's, from writing a request to reading its answer; the TCP handshake of a new connection is not in it.\n")
	b.WriteString("- **split max/min**: requests served by the busiest worker ÷ by the idlest, counted by the workers themselves.\n")
	b.WriteString("- **CPU µs/req**: utime+stime from /proc/PID/stat (10 ms ticks) over the measured run, ÷ requests the workers served. " +
		"For new-conn that is per connection. master is the handoff master (or the Node.js primary), workers the serving processes; the load generator is not counted.\n")
	b.WriteString("- **failed**: wrk's connect, read, write and timeout errors plus answers with status ≥ 400.\n\n")
	rep.Targets = computeTargets(rows)
	b.WriteString("## Issue 6 targets, as ratios within this run\n\n")
	b.WriteString(targetsTable(rep.Targets))
	if chart != "" {
		fmt.Fprintf(&b, "\n![throughput and p99 per server and workload](%s)\n", chart)
	}
	return b.String()
}

func firstSkewed(rows []runResult) (runResult, bool) {
	for _, name := range []string{"handoff-ll", "handoff-rr", "reuseport"} {
		if r, ok := findRow(rows, name, "skewed"); ok {
			return r, true
		}
	}
	for _, r := range rows {
		if r.Workload == "skewed" && r.ok() {
			return r, true
		}
	}
	return runResult{}, false
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// readReport reads a results.json back.
func readReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	rep := &report{}
	if err := json.Unmarshal(b, rep); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return rep, nil
}

// writeOutputs writes results.md, results.json, the chart, and -json, and
// prints the Markdown to w.
func writeOutputs(c *config, rep *report, w io.Writer) error {
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return err
	}
	var errs []error
	chart := "chart.png"
	if err := writeChart(rep.rows(), rep.Config.Workloads, rep.Config.Servers, filepath.Join(c.out, "chart")); err != nil {
		errs = append(errs, fmt.Errorf("chart: %w", err))
		chart = ""
	}
	md := rep.markdown(chart)
	if err := os.WriteFile(filepath.Join(c.out, "results.md"), []byte(md), 0o644); err != nil {
		errs = append(errs, err)
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	js = append(js, '\n')
	paths := []string{filepath.Join(c.out, "results.json")}
	if c.jsonPath != "" {
		paths = append(paths, c.jsonPath)
	}
	for _, p := range slices.Compact(paths) {
		if err := os.WriteFile(p, js, 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	_, _ = io.WriteString(w, md)
	fmt.Fprintf(w, "\nWrote %s (results.md, results.json, chart.png, chart.svg, logs/)\n", c.out)
	if len(errs) > 0 {
		return fmt.Errorf("writing outputs: %v", errs)
	}
	return nil
}

// progress is the status line on stderr while a run lasts: rewritten in
// place on a terminal, one line per run otherwise.
type progress struct {
	w        io.Writer
	label    string
	tty      bool
	start    time.Time
	stop     chan struct{}
	finished chan struct{}
}

func newProgress(w *os.File, label string, expected time.Duration) *progress {
	p := &progress{w: w, label: label, start: time.Now(), stop: make(chan struct{}), finished: make(chan struct{})}
	if fi, err := w.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		p.tty = true
	}
	go func() {
		defer close(p.finished)
		if !p.tty {
			fmt.Fprintf(p.w, "%s: running (~%s)\n", p.label, expected.Round(time.Second))
			return
		}
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			fmt.Fprintf(p.w, "\r\033[K%s: %s / ~%s", p.label, time.Since(p.start).Round(time.Second), expected.Round(time.Second))
			select {
			case <-t.C:
			case <-p.stop:
				return
			}
		}
	}()
	return p
}

func (p *progress) done(r runResult) {
	close(p.stop)
	<-p.finished
	prefix := ""
	if p.tty {
		prefix = "\r\033[K"
	}
	if r.Error != "" && !r.ok() {
		fmt.Fprintf(p.w, "%s%s: FAILED: %s\n", prefix, p.label, r.Error)
		return
	}
	fmt.Fprintf(p.w, "%s%s: %.0f req/s, p99 %s, failed %d, CPU µs/req %.1f+%.1f, context switches/req %.2f+%.2f\n", prefix, p.label,
		r.ReqPerSec, fmtLatency(r.Load.P99), r.Failed, r.MasterUsReq, r.WorkersUsReq, r.MasterCSReq, r.WorkersCSReq)
}
