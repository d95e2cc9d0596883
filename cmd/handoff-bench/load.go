package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
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

// requestTimeout is how long a request may take before it counts as a
// timeout, in both generators (wrk's default).
const requestTimeout = 2 * time.Second

// maxRequestsPerConn bounds the built-in generator's loop per connection
// whatever the duration.
const maxRequestsPerConn = 50_000_000

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

// closeConn says whether connection (or wrk thread) i of a workload sends
// Connection: close. In the skewed workload every other one does.
func (s loadSpec) closeConn(i int) bool {
	if newConn(s.workload) {
		return true
	}
	return s.workload == "skewed" && i%2 == 1
}

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

// generator makes load.
type generator interface {
	name() string
	run(ctx context.Context, spec loadSpec) (loadResult, error)
}

// chooseGenerator picks wrk or the built-in generator.
func chooseGenerator(kind, tmp string) (generator, error) {
	path, err := exec.LookPath("wrk")
	switch kind {
	case "go":
		return goGenerator{}, nil
	case "wrk":
		if err != nil {
			return nil, errors.New("-loadgen=wrk: wrk is not on PATH (apt-get install wrk)")
		}
	case "auto":
		if err != nil {
			return goGenerator{}, nil
		}
	}
	return &wrkGenerator{path: path, dir: tmp}, nil
}

// wrkGenerator runs wrk with a Lua script whose done() prints the results
// between markers, one "key value" a line.
type wrkGenerator struct {
	path string
	dir  string
	n    int
}

func (g *wrkGenerator) name() string { return "wrk" }

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

// goGenerator is the built-in load generator: one goroutine per
// connection, each sending a request and reading the answer in a loop
// until the duration ends, bounded by maxRequestsPerConn. Like wrk it
// times a request from writing it to reading the last byte of the answer;
// connecting is not included.
type goGenerator struct{}

func (goGenerator) name() string { return "go" }

func (goGenerator) run(ctx context.Context, spec loadSpec) (loadResult, error) {
	ctx, cancel := context.WithTimeout(ctx, spec.duration+requestTimeout+time.Second)
	defer cancel()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(spec.port))
	start := time.Now()
	deadline := start.Add(spec.duration)
	results := make([]connResult, spec.conns)
	var wg sync.WaitGroup
	for i := range spec.conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = runConn(ctx, addr, spec, i, deadline)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := ctx.Err(); err != nil && errors.Is(context.Cause(ctx), context.Canceled) {
		return loadResult{}, err
	}
	var r loadResult
	h := newHistogram()
	for _, c := range results {
		r.Requests += c.requests
		r.Errors.Connect += c.errors.Connect
		r.Errors.Read += c.errors.Read
		r.Errors.Write += c.errors.Write
		r.Errors.Status += c.errors.Status
		r.Errors.Timeout += c.errors.Timeout
		r.Burn += c.burn
		if c.closing {
			r.Close += c.sent
		} else {
			r.KeepAlive += c.sent
		}
		h.merge(c.hist)
	}
	r.Elapsed = elapsed
	r.P50, r.P90, r.P99, r.Max = h.percentile(50), h.percentile(90), h.percentile(99), h.max
	if spec.workload != "skewed" {
		r.KeepAlive, r.Close, r.Burn = 0, 0, 0
	}
	return r, nil
}

// connResult is one generator connection's tally.
type connResult struct {
	requests, sent, burn uint64
	closing              bool
	errors               errorCounts
	hist                 *histogram
}

func runConn(ctx context.Context, addr string, spec loadSpec, i int, deadline time.Time) connResult {
	res := connResult{closing: spec.closeConn(i), hist: newHistogram()}
	rng := rand.New(rand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
	header := "Host: " + addr + "\r\n"
	if res.closing {
		header += "Connection: close\r\n"
	}
	plain := []byte("GET / HTTP/1.1\r\n" + header + "\r\n")
	burning := []byte("GET " + spec.burnPath() + " HTTP/1.1\r\n" + header + "\r\n")
	var c net.Conn
	var br *bufio.Reader
	defer func() {
		if c != nil {
			_ = c.Close()
		}
	}()
	d := net.Dialer{Timeout: requestTimeout}
	for n := 0; n < maxRequestsPerConn && time.Now().Before(deadline) && ctx.Err() == nil; n++ {
		if c == nil {
			var err error
			if c, err = d.DialContext(ctx, "tcp", addr); err != nil {
				res.errors.Connect++
				c = nil
				time.Sleep(time.Millisecond)
				continue
			}
			br = bufio.NewReader(c)
		}
		req := plain
		if spec.workload == "skewed" && rng.Float64() < spec.burnFrac {
			req = burning
			res.burn++
		}
		res.sent++
		t0 := time.Now()
		_ = c.SetDeadline(t0.Add(requestTimeout))
		if _, err := c.Write(req); err != nil {
			res.errors.Write++
			_ = c.Close()
			c = nil
			continue
		}
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				res.errors.Timeout++
			} else {
				res.errors.Read++
			}
			_ = c.Close()
			c = nil
			continue
		}
		res.hist.record(time.Since(t0))
		res.requests++
		if resp.StatusCode >= 400 {
			res.errors.Status++
		}
		if res.closing || resp.Close {
			_ = c.Close()
			c = nil
		}
	}
	return res
}

// histogram counts latencies in log-linear buckets: 1µs wide below 1ms,
// 10µs below 10ms, 100µs below 100ms and 1ms up to 10s, so a percentile
// is exact to 1%.
type histogram struct {
	counts []uint64
	n      uint64
	max    time.Duration
}

const histBuckets = 1000 + 900 + 900 + 9900 + 1

func newHistogram() *histogram { return &histogram{counts: make([]uint64, histBuckets)} }

func bucketOf(d time.Duration) int {
	us := max(int64(d/time.Microsecond), 0)
	switch {
	case us < 1000:
		return int(us)
	case us < 10_000:
		return 1000 + int((us-1000)/10)
	case us < 100_000:
		return 1900 + int((us-10_000)/100)
	case us < 10_000_000:
		return 2800 + int((us-100_000)/1000)
	}
	return histBuckets - 1
}

// bucketValue is the lower bound of bucket i.
func bucketValue(i int) time.Duration {
	var us int
	switch {
	case i < 1000:
		us = i
	case i < 1900:
		us = 1000 + (i-1000)*10
	case i < 2800:
		us = 10_000 + (i-1900)*100
	default:
		us = 100_000 + (i-2800)*1000
	}
	return time.Duration(us) * time.Microsecond
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(d)]++
	h.n++
	h.max = max(h.max, d)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.max = max(h.max, o.max)
}

// percentile returns the smallest bucket value at or below which p% of
// the samples fall.
func (h *histogram) percentile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p / 100 * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return bucketValue(i)
		}
	}
	return h.max
}
