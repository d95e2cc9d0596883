//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The workloads, in the order they run.
var allWorkloads = []string{"keep-alive", "new-conn", "new-conn-c1", "new-conn-c4", "skewed"}

// lowConcurrency are the new-connection workloads with a fixed number of
// client connections, on one wrk thread, whatever -connections says: so
// few connections arrive at once that a master cannot batch its accepts
// and sends, and each connection pays for a wakeup.
var lowConcurrency = map[string]int{"new-conn-c1": 1, "new-conn-c4": 4}

// newConn says whether every request of a workload carries Connection:
// close, so that each request is a new connection.
func newConn(workload string) bool {
	return workload == "new-conn" || lowConcurrency[workload] > 0
}

// requestTimeout is how long a request may take before wrk counts it as
// a timeout (wrk's default).
const requestTimeout = 2 * time.Second

// loadSpec is one load run against one server.
type loadSpec struct {
	workload string
	port     int
	duration time.Duration
	conns    int
	threads  int
	burn     time.Duration
	burnFrac float64
}

// newLoadSpec is the load of workload wl against port, for the measured
// duration.
func newLoadSpec(c *config, wl string, port int) loadSpec {
	s := loadSpec{workload: wl, port: port, duration: c.duration, conns: c.conns, threads: c.threads, burn: c.burn, burnFrac: c.burnFrac}
	if n := lowConcurrency[wl]; n > 0 {
		s.conns, s.threads = n, 1
	}
	return s
}

// burnPath is the path a burning request asks for.
func (s loadSpec) burnPath() string { return "/?burn=" + s.burn.String() }

// loadResult is what the client saw.
type loadResult struct {
	Requests  uint64        `json:"requests"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	P50       time.Duration `json:"p50_ns"`
	P90       time.Duration `json:"p90_ns"`
	P99       time.Duration `json:"p99_ns"`
	Max       time.Duration `json:"max_ns"`
	Errors    errorCounts   `json:"errors"`
	KeepAlive uint64        `json:"keepalive_requests_sent"` // skewed: sent on keep-alive connections
	Close     uint64        `json:"close_requests_sent"`     // skewed: sent with Connection: close
	Burn      uint64        `json:"burn_requests_sent"`      // skewed: sent with ?burn=
}

// errorCounts are wrk's error classes.
type errorCounts struct {
	Connect uint64 `json:"connect"`
	Read    uint64 `json:"read"`
	Write   uint64 `json:"write"`
	Status  uint64 `json:"status"` // responses with status >= 400
	Timeout uint64 `json:"timeout"`
}

func (e errorCounts) total() uint64 { return e.Connect + e.Read + e.Write + e.Status + e.Timeout }

func (r loadResult) reqPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// wrkGenerator makes the load: it runs wrk with a Lua script whose done()
// prints the results between markers, one "key value" a line.
type wrkGenerator struct {
	path string // wrk's path
	dir  string // where the scripts are written
	n    int    // scripts written, to name the next one
}

// newWrkGenerator finds wrk on PATH; its scripts go in dir.
func newWrkGenerator(dir string) (*wrkGenerator, error) {
	path, err := exec.LookPath("wrk")
	if err != nil {
		return nil, errors.New("wrk is not on PATH (apt-get install wrk)")
	}
	return &wrkGenerator{path: path, dir: dir}, nil
}

// wrkArgs returns wrk's command line for spec, with its script at script.
func wrkArgs(spec loadSpec, script string) []string {
	secs := int(math.Ceil(spec.duration.Seconds()))
	threads := spec.threads
	if spec.workload == "skewed" {
		threads = max(threads, 2) // one keep-alive thread, one closing
	}
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(max(spec.conns, threads)),
		"-d", strconv.Itoa(max(secs, 1)) + "s", "-T", strconv.Itoa(int(requestTimeout.Seconds())) + "s", "-s", script}
	if newConn(spec.workload) {
		args = append(args, "-H", "Connection: close")
	}
	return append(args, "http://127.0.0.1:"+strconv.Itoa(spec.port)+"/")
}

func (g *wrkGenerator) run(ctx context.Context, spec loadSpec) (loadResult, error) {
	g.n++
	script := filepath.Join(g.dir, fmt.Sprintf("wrk-%d.lua", g.n))
	if err := os.WriteFile(script, []byte(wrkScript(spec)), 0o644); err != nil {
		return loadResult{}, err
	}
	defer os.Remove(script)
	// Bounded: wrk stops itself after -d; this is the backstop.
	ctx, cancel := context.WithTimeout(ctx, spec.duration+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.path, wrkArgs(spec, script)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return loadResult{}, fmt.Errorf("wrk: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return parseWrk(out)
}

const (
	wrkBegin = "handoff-bench-wrk-begin"
	wrkEnd   = "handoff-bench-wrk-end"
)

// wrkScript is the Lua script for spec. For keep-alive and new-conn it
// only reports; for skewed it also makes the requests: threads with an
// even number send Connection: close, and each request burns CPU with
// probability spec.burnFrac.
func wrkScript(spec loadSpec) string {
	var b strings.Builder
	if spec.workload == "skewed" {
		fmt.Fprintf(&b, `local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("id", counter)
  thread:set("closing", counter %% 2 == 0)
  table.insert(threads, thread)
end
function init(args)
  local h = {}
  if closing then h["Connection"] = "close" end
  plain = wrk.format("GET", "/", h)
  burning = wrk.format("GET", %q, h)
  sent, burnt = 0, 0
  math.randomseed(id * 7919 + os.time())
end
function request()
  sent = sent + 1
  if math.random() < %g then
    burnt = burnt + 1
    return burning
  end
  return plain
end
`, spec.burnPath(), spec.burnFrac)
	}
	fmt.Fprintf(&b, `function done(summary, latency, requests)
  local e = summary.errors
  io.write(%q, "\n")
  io.write("requests ", summary.requests, "\n")
  io.write("duration_us ", summary.duration, "\n")
  io.write("errors_connect ", e.connect, "\n")
  io.write("errors_read ", e.read, "\n")
  io.write("errors_write ", e.write, "\n")
  io.write("errors_status ", e.status, "\n")
  io.write("errors_timeout ", e.timeout, "\n")
  io.write("p50_us ", latency:percentile(50), "\n")
  io.write("p90_us ", latency:percentile(90), "\n")
  io.write("p99_us ", latency:percentile(99), "\n")
  io.write("max_us ", latency.max, "\n")
`, wrkBegin)
	if spec.workload == "skewed" {
		b.WriteString(`  local ka, cl, bu = 0, 0, 0
  for _, t in ipairs(threads) do
    local n = t:get("sent") or 0
    if t:get("closing") then cl = cl + n else ka = ka + n end
    bu = bu + (t:get("burnt") or 0)
  end
  io.write("sent_keepalive ", ka, "\n")
  io.write("sent_close ", cl, "\n")
  io.write("sent_burn ", bu, "\n")
`)
	}
	fmt.Fprintf(&b, "  io.write(%q, \"\\n\")\nend\n", wrkEnd)
	return b.String()
}

// parseWrk reads the block the script's done() printed. Lua may print
// integers as floats ("1.5e+06", "123.0"), so numbers parse as floats.
func parseWrk(out []byte) (loadResult, error) {
	var r loadResult
	in := false
	seen := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == wrkBegin:
			in = true
			continue
		case line == wrkEnd:
			if !in {
				return r, errors.New("wrk output: end marker before begin")
			}
			for _, k := range []string{"requests", "duration_us", "p50_us", "p99_us"} {
				if !seen[k] {
					return r, fmt.Errorf("wrk output: no %s", k)
				}
			}
			return r, nil
		case !in:
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		if !ok {
			return r, fmt.Errorf("wrk output: bad line %q", line)
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || f < 0 || math.IsInf(f, 0) || math.IsNaN(f) {
			return r, fmt.Errorf("wrk output: bad number in %q", line)
		}
		n := uint64(math.Round(f))
		us := time.Duration(n) * time.Microsecond
		seen[k] = true
		switch k {
		case "requests":
			r.Requests = n
		case "duration_us":
			r.Elapsed = us
		case "errors_connect":
			r.Errors.Connect = n
		case "errors_read":
			r.Errors.Read = n
		case "errors_write":
			r.Errors.Write = n
		case "errors_status":
			r.Errors.Status = n
		case "errors_timeout":
			r.Errors.Timeout = n
		case "p50_us":
			r.P50 = us
		case "p90_us":
			r.P90 = us
		case "p99_us":
			r.P99 = us
		case "max_us":
			r.Max = us
		case "sent_keepalive":
			r.KeepAlive = n
		case "sent_close":
			r.Close = n
		case "sent_burn":
			r.Burn = n
		}
	}
	if in {
		return r, errors.New("wrk output: no end marker")
	}
	return r, errors.New("wrk output: no results block (did the Lua script run?)")
}
