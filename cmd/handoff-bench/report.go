//go:build linux

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
	"strconv"
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

	// perf stat's counts over the measured run, and the same per request
	// the workers served. Nil (absent) when not counted: no perf, perf
	// failed (PerfStatError says why), or no master to count.
	PerfMaster    *perfCounts `json:"perf_master,omitempty"`
	PerfWorkers   *perfCounts `json:"perf_workers,omitempty"`
	SyscallsReq   perReq      `json:"perf_syscalls_per_req"`
	CtxswReq      perReq      `json:"perf_ctx_switches_per_req"`
	PerfStatError string      `json:"perf_stat_error,omitempty"`

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

// perfUsage is what the two perf stats of a run counted.
type perfUsage struct {
	master  *perfCounts // nil for a server without a master
	workers perfCounts
}

// perReq is a count per request of the master, of the workers, and of
// both. A nil field was not measured, which is not the same as zero.
type perReq struct {
	Master  *float64 `json:"master,omitempty"`
	Workers *float64 `json:"workers,omitempty"`
	Total   *float64 `json:"total,omitempty"`
}

// perRequest divides the master's and workers' counts by n requests. The
// total needs the master's count if the server has a master.
func perRequest(master *uint64, workers uint64, hasMaster bool, n uint64) perReq {
	var p perReq
	if n == 0 {
		return p
	}
	w := float64(workers) / float64(n)
	p.Workers = &w
	switch {
	case !hasMaster:
		p.Total = &w
	case master != nil:
		m := float64(*master) / float64(n)
		t := m + w
		p.Master, p.Total = &m, &t
	}
	return p
}

// fillPerf sets the perf stat fields; fill must have run. counted is nil
// when perf stat did not count.
func (r *runResult) fillPerf(counted *perfUsage) {
	if counted == nil {
		return
	}
	w := counted.workers
	r.PerfMaster, r.PerfWorkers = counted.master, &w
	var mSys, mCS *uint64
	if m := counted.master; m != nil {
		mSys, mCS = &m.Syscalls, &m.ContextSwitches
	}
	hasMaster := r.HasMaster || counted.master != nil
	r.SyscallsReq = perRequest(mSys, w.Syscalls, hasMaster, r.Served)
	r.CtxswReq = perRequest(mCS, w.ContextSwitches, hasMaster, r.Served)
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
	Ratios  []ratio     `json:"ratios,omitempty"`
	// PerfStatNote says why no run counted syscalls ("" if they did).
	PerfStatNote string `json:"perf_stat_note,omitempty"`
}

// newReport starts the report of a run, with wrk and node (if not "") the
// paths of the programs whose versions it gives.
func newReport(c *config, servers []string, wrk, node string) *report {
	return &report{
		Started: time.Now().UTC(),
		Machine: probeMachine(wrk, node),
		Config: benchConfig{
			Duration: c.duration.String(), Warmup: c.warmup.String(), Workers: c.workers,
			Connections: c.conns, Threads: c.threads, Rounds: c.rounds,
			Burn: c.burn.String(), BurnFrac: c.burnFrac,
			Servers: servers, Workloads: c.workloads, Generator: "wrk", MasterProcs: c.masterProcs,
		},
	}
}

func probeMachine(wrk, node string) machine {
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
	// wrk -v prints its version and exits 1.
	out, _ := exec.Command(wrk, "-v").CombinedOutput()
	m.Wrk = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
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

// fmtPerReq formats a count per request; "–" if it was not measured.
func fmtPerReq(v *float64, prec int) string {
	if v == nil {
		return "–"
	}
	return strconv.FormatFloat(*v, 'f', prec, 64)
}

// tableColumns are the table's headings after server and workload.
var tableColumns = []string{"req/s", "p50", "p99", "split max/min", "failed",
	"CPU µs/req master", "CPU µs/req workers", "CPU µs/req total",
	"syscalls/req master", "syscalls/req workers", "syscalls/req total",
	"ctxsw/req master", "ctxsw/req workers", "ctxsw/req total"}

// markdownTable renders the result rows.
func markdownTable(rows []runResult) string {
	var b strings.Builder
	b.WriteString("| server | workload | " + strings.Join(tableColumns, " | ") + " |\n")
	b.WriteString("| --- | --- |" + strings.Repeat(" ---: |", len(tableColumns)) + "\n")
	for _, r := range rows {
		if !r.ok() {
			fmt.Fprintf(&b, "| %s | %s | failed: %s |%s\n", r.Server, r.Workload, strings.ReplaceAll(r.Error, "|", "/"),
				strings.Repeat(" |", len(tableColumns)-1))
			continue
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			r.Server, r.Workload, r.ReqPerSec, fmtLatency(r.Load.P50), fmtLatency(r.Load.P99), fmtSplit(r), r.Failed,
			fmtCPU(r.MasterUsReq, r.HasMaster), fmtCPU(r.WorkersUsReq, r.Served > 0), fmtCPU(r.TotalUsReq, r.Served > 0),
			fmtPerReq(r.SyscallsReq.Master, 1), fmtPerReq(r.SyscallsReq.Workers, 1), fmtPerReq(r.SyscallsReq.Total, 1),
			fmtPerReq(r.CtxswReq.Master, 2), fmtPerReq(r.CtxswReq.Workers, 2), fmtPerReq(r.CtxswReq.Total, 2))
	}
	return b.String()
}

// ratio is one of the comparisons issue 6 set goals for, measured within
// one run. The binary only measures it; README.md says what each goal is.
type ratio struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Measured bool    `json:"measured"`
	Unit     string  `json:"unit"` // "x" or "%"
}

// computeRatios computes the ratios from the table rows. A ratio whose
// runs or numbers are missing is reported as not measured.
func computeRatios(rows []runResult) []ratio {
	var rs []ratio
	// div is num ÷ den; nil inputs (a missing run or an uncounted number)
	// leave the ratio not measured.
	div := func(name string, num, den *float64) {
		r := ratio{Name: name, Unit: "x"}
		if num != nil && den != nil && *den > 0 {
			r.Value, r.Measured = *num / *den, true
		}
		rs = append(rs, r)
	}
	// get reads one number of a row, nil if the row is missing.
	get := func(server, workload string, value func(runResult) *float64) *float64 {
		r, ok := findRow(rows, server, workload)
		if !ok {
			return nil
		}
		return value(r)
	}
	val := func(f func(runResult) float64) func(runResult) *float64 {
		return func(r runResult) *float64 { v := f(r); return &v }
	}
	rps := val(func(r runResult) float64 { return r.ReqPerSec })
	p50 := val(func(r runResult) float64 { return float64(r.Load.P50) })
	p99 := val(func(r runResult) float64 { return float64(r.Load.P99) })
	cpu := func(r runResult) *float64 {
		if r.Served == 0 {
			return nil
		}
		return &r.TotalUsReq
	}
	syscalls := func(r runResult) *float64 { return r.SyscallsReq.Total }
	ctxsw := func(r runResult) *float64 { return r.CtxswReq.Total }

	div("new-conn req/s: handoff-rr ÷ reuseport",
		get("handoff-rr", "new-conn", rps), get("reuseport", "new-conn", rps))
	div("new-conn req/s: handoff-ll ÷ reuseport",
		get("handoff-ll", "new-conn", rps), get("reuseport", "new-conn", rps))
	div("new-conn-c4 req/s: handoff-rr ÷ reuseport",
		get("handoff-rr", "new-conn-c4", rps), get("reuseport", "new-conn-c4", rps))
	div("new-conn-c1 p50: handoff-rr ÷ reuseport",
		get("handoff-rr", "new-conn-c1", p50), get("reuseport", "new-conn-c1", p50))
	div("new-conn CPU/conn: handoff-rr total ÷ reuseport total",
		get("handoff-rr", "new-conn", cpu), get("reuseport", "new-conn", cpu))
	share := ratio{Name: "new-conn CPU/conn: handoff-rr master share of its total", Unit: "%"}
	if rr, ok := findRow(rows, "handoff-rr", "new-conn"); ok && rr.Served > 0 && rr.TotalUsReq > 0 {
		share.Value, share.Measured = 100*rr.MasterUsReq/rr.TotalUsReq, true
	}
	rs = append(rs, share)
	div("new-conn syscalls/conn: handoff-rr total ÷ reuseport total",
		get("handoff-rr", "new-conn", syscalls), get("reuseport", "new-conn", syscalls))
	div("new-conn context switches/conn: handoff-rr total ÷ reuseport total",
		get("handoff-rr", "new-conn", ctxsw), get("reuseport", "new-conn", ctxsw))
	div("keep-alive req/s: handoff-rr ÷ reuseport",
		get("handoff-rr", "keep-alive", rps), get("reuseport", "keep-alive", rps))
	div("new-conn req/s: handoff-rr ÷ node-rr",
		get("handoff-rr", "new-conn", rps), get("node-rr", "new-conn", rps))
	div("skewed p99: handoff-ll ÷ reuseport",
		get("handoff-ll", "skewed", p99), get("reuseport", "skewed", p99))
	div("skewed p99: handoff-ll ÷ handoff-rr",
		get("handoff-ll", "skewed", p99), get("handoff-rr", "skewed", p99))
	div("skewed p99: handoff-lr ÷ reuseport",
		get("handoff-lr", "skewed", p99), get("reuseport", "skewed", p99))
	div("skewed p99: handoff-lr ÷ handoff-rr",
		get("handoff-lr", "skewed", p99), get("handoff-rr", "skewed", p99))
	return rs
}

// ratiosTable renders the ratios; one not measured is "–".
func ratiosTable(rs []ratio) string {
	var b strings.Builder
	b.WriteString("| ratio | measured |\n| --- | ---: |\n")
	for _, r := range rs {
		val := "–"
		switch {
		case !r.Measured:
		case r.Unit == "%":
			val = fmt.Sprintf("%.1f%%", r.Value)
		default:
			val = fmt.Sprintf("%.2f×", r.Value)
		}
		fmt.Fprintf(&b, "| %s | %s |\n", r.Name, val)
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
	gen := c.Generator
	if gen == "wrk" {
		gen = "wrk (" + orUnknown(m.Wrk) + ")"
	}
	fmt.Fprintf(&b, "Load: %s, %d connections, %d threads, %s measured per run after %s of warm-up, %d round(s); "+
		"every server has %d worker processes; all traffic on 127.0.0.1, with the load generator on the same CPUs.\n\n",
		gen, c.Connections, c.Threads, c.Duration, c.Warmup, c.Rounds, c.Workers)
	b.WriteString(markdownTable(rows))
	b.WriteString("\n")
	b.WriteString("- **keep-alive**: every connection stays open for the whole run; GET / answers \"hello world\\n\".\n")
	b.WriteString("- **new-conn**: every request carries `Connection: close`, so each request is a new TCP connection (accept, handoff, close).\n")
	b.WriteString("- **new-conn-c1**, **new-conn-c4**: the same with only 1 and 4 client connections (one wrk thread), " +
		"so connections arrive one or a few at a time and a master cannot batch its accepts and sends: each connection pays for its wakeup.\n")
	fmt.Fprintf(&b, "- **skewed**: half the client connections (every other wrk thread) keep alive, the other half send `Connection: close` on every request; "+
		"each request asks for `%s` (the handler spins the CPU that long) with probability %g, else GET /. "+
		"Keep-alive connections complete many more requests than closing ones, so most requests are keep-alive: ",
		"/?burn="+c.Burn, c.BurnFrac)
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
	b.WriteString(perfStatNote(rep.PerfStatNote, rows))
	b.WriteString("- **failed**: wrk's connect, read, write and timeout errors plus answers with status ≥ 400.\n\n")
	rep.Ratios = computeRatios(rows)
	b.WriteString("## Ratios within this run\n\n")
	b.WriteString("handoff against the servers issue 6 compares it with; cmd/handoff-bench/README.md gives the goal of each.\n\n")
	b.WriteString(ratiosTable(rep.Ratios))
	if chart != "" {
		fmt.Fprintf(&b, "\n![throughput and p99 per server and workload](%s)\n", chart)
	}
	return b.String()
}

// perfStatNote describes the syscall and context switch columns and, once
// for each reason, why some are empty.
func perfStatNote(note string, rows []runResult) string {
	var b strings.Builder
	b.WriteString("- **syscalls/req**, **ctxsw/req**: `perf stat -e raw_syscalls:sys_enter,context-switches`, one on the master's pid and one on the workers' pids together, " +
		"counting from just before the load starts to just after it ends, ÷ requests the workers served (for new-conn* per connection). " +
		"Counting syscalls slows every syscall on the machine a little, for every server alike. \"–\" is not measured, never zero.")
	if note != "" {
		fmt.Fprintf(&b, " **Not counted in this run: %s.**", strings.TrimSuffix(note, "."))
	}
	b.WriteString("\n")
	var reasons []string
	runs := map[string][]string{}
	for _, r := range rows {
		if r.PerfStatError == "" {
			continue
		}
		if _, ok := runs[r.PerfStatError]; !ok {
			reasons = append(reasons, r.PerfStatError)
		}
		runs[r.PerfStatError] = append(runs[r.PerfStatError], r.Workload+" "+r.Server)
	}
	for _, why := range reasons {
		fmt.Fprintf(&b, "  - perf stat failed for %s: %s\n", strings.Join(runs[why], ", "), strings.ReplaceAll(why, "|", "/"))
	}
	return b.String()
}

func firstSkewed(rows []runResult) (runResult, bool) {
	for _, name := range []string{"handoff-lr", "handoff-ll", "handoff-rr", "reuseport"} {
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
	fmt.Fprintf(p.w, "%s%s: %.0f req/s, p99 %s, failed %d, CPU µs/req %.1f+%.1f, context switches/req %.2f+%.2f, syscalls/req %s+%s\n", prefix, p.label,
		r.ReqPerSec, fmtLatency(r.Load.P99), r.Failed, r.MasterUsReq, r.WorkersUsReq, r.MasterCSReq, r.WorkersCSReq,
		fmtPerReq(r.SyscallsReq.Master, 1), fmtPerReq(r.SyscallsReq.Workers, 1))
}
