//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"
)

// logLine is what the tests read from a JSON log line.
type logLine struct {
	Level   string  `json:"level"`
	Message string  `json:"message"`
	Source  string  `json:"source"`
	Dropped int     `json:"dropped"`
	Time    string  `json:"time"`
	Worker  float64 `json:"worker"`
}

// jsonLines parses every line of out as a JSON object, and fails the
// test for each one that is not.
func jsonLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Errorf("not a JSON log line: %q", sc.Text())
			continue
		}
		lines = append(lines, m)
	}
	return lines
}

func decodeLine(t *testing.T, m map[string]any) logLine {
	t.Helper()
	b, _ := json.Marshal(m)
	var l logLine
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	return l
}

func TestRateLimitedLogHoldsBackAndCounts(t *testing.T) {
	t.Parallel()
	out := &proctest.Output{}
	const every = 200 * time.Millisecond
	r := &rateLimitedLog{log: zerolog.New(out).With().Str("source", "test").Logger(), every: every, now: time.Now}
	t.Cleanup(r.stop)
	l := newLogAdapter(r)
	const burst = 5
	start := time.Now()
	for i := 1; i <= burst; i++ {
		l.Printf("http: Accept error: %d; retrying", i)
	}
	waitFor(t, "the held-back line", func() bool { return strings.Count(out.String(), "\n") == 2 })
	if d := time.Since(start); d < every {
		t.Errorf("the second line came %v after the first, within the %v interval", d, every)
	}
	lines := jsonLines(t, out.String())
	first, second := decodeLine(t, lines[0]), decodeLine(t, lines[1])
	if first.Message != "http: Accept error: 1; retrying" || first.Dropped != 0 || first.Level != "warn" || first.Source != "test" {
		t.Errorf("first line %+v", first)
	}
	// The last line of the burst, with the ones between it and the first.
	if second.Message != fmt.Sprintf("http: Accept error: %d; retrying", burst) || second.Dropped != burst-2 {
		t.Errorf("second line %+v, want the last of the burst with dropped %d", second, burst-2)
	}
	// Nothing more is held back.
	time.Sleep(2 * every)
	if n := strings.Count(out.String(), "\n"); n != 2 {
		t.Errorf("%d lines, want 2:\n%s", n, out.String())
	}
	// A line after a quiet interval is written at once.
	l.Print("later")
	if !strings.Contains(out.String(), `"message":"later"`) {
		t.Errorf("a line after a quiet interval was held back:\n%s", out.String())
	}
}

// Both http.Servers log through zerolog: a line the server writes to its
// ErrorLog (here a handler's superfluous WriteHeader) comes out as JSON
// with the source.
func TestHTTPErrorLogGoesThroughZerolog(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		source string
		server func(zerolog.Logger) *http.Server
	}{
		{name: "admin", source: "admin server", server: func(log zerolog.Logger) *http.Server {
			return serveAdmin(listenLoopback(t), nil, 1, log).srv
		}},
		{name: "demo", source: "demo worker", server: func(log zerolog.Logger) *http.Server {
			return demoServer(7, log)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out := &proctest.Output{}
			srv := tt.server(zerolog.New(out))
			if srv.ErrorLog == nil {
				t.Fatal("no ErrorLog: the server would write raw lines to stderr")
			}
			srv.ErrorLog.Printf("http: superfluous response.WriteHeader call from %s", "x")
			lines := jsonLines(t, out.String())
			var found bool
			for _, m := range lines {
				l := decodeLine(t, m)
				found = found || (l.Source == tt.source && strings.HasPrefix(l.Message, "http: superfluous"))
			}
			if !found {
				t.Errorf("no line from %q in:\n%s", tt.source, out.String())
			}
		})
	}
}

func TestLogFormatAndLevelReachTheWorkers(t *testing.T) {
	// Not parallel: it sets the environment.
	tests := []struct {
		name               string
		args               []string
		envFormat, envLvl  string
		wantFormat         string
		wantLevel          zerolog.Level
		wantEnvFromMasters []string
	}{
		{name: "flags win", args: []string{"--log-format", "console", "--log-level", "warn"}, envFormat: "json", envLvl: "debug",
			wantFormat: "console", wantLevel: zerolog.WarnLevel, wantEnvFromMasters: []string{envLogFormat + "=console", envLogLevel + "=warn"}},
		{name: "from the master", envFormat: "console", envLvl: "debug",
			wantFormat: "console", wantLevel: zerolog.DebugLevel, wantEnvFromMasters: []string{envLogFormat + "=console", envLogLevel + "=debug"}},
		{name: "defaults off a terminal", wantFormat: "json", wantLevel: zerolog.InfoLevel,
			wantEnvFromMasters: []string{envLogFormat + "=json", envLogLevel + "=info"}},
		{name: "junk in the environment", envFormat: "xml", envLvl: "loud", wantFormat: "json", wantLevel: zerolog.InfoLevel,
			wantEnvFromMasters: []string{envLogFormat + "=json", envLogLevel + "=info"}},
	}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		t.Skip("stderr is a terminal: the default format is console")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envLogFormat, tt.envFormat)
			t.Setenv(envLogLevel, tt.envLvl)
			c, err := parseFlags(tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if f, l := logFormat(c), logLevel(c); f != tt.wantFormat || l != tt.wantLevel {
				t.Errorf("format %q, level %v; want %q, %v", f, l, tt.wantFormat, tt.wantLevel)
			}
			if env := workerLogEnv(c); strings.Join(env, " ") != strings.Join(tt.wantEnvFromMasters, " ") {
				t.Errorf("workers' env %v, want %v", env, tt.wantEnvFromMasters)
			}
		})
	}
}

// durationFields are the log fields that hold a duration. Each must be a
// string with its unit, such as "1.5s".
var durationFields = []string{"uptime", "restart_in", "backoff", "timeout", "shutdown_delay", "delay"}

// The whole life of a master, with --log-format json, logs JSON on every
// line of stdout and stderr, its workers' and its http.Servers' included:
// start, requests, a worker's crash and restart, a /metrics flood, an fd
// exhaustion that makes the admin server's Accept fail, SIGHUP, SIGTERM.
func TestCLIJSONLogsEveryLine(t *testing.T) {
	const limit = 64
	admin := proctest.FreeAddr(t)
	// --admin-max-conns above what the fd limit holds, on purpose: the
	// admin server's Accept fails with EMFILE and net/http logs it.
	m := startUnderFDLimit(t, limit, "--workers", "2", "--admin", admin, "--admin-max-conns", "1000", "--log-level", "debug")
	url := "http://" + m.addr + "/"
	if ok := serveN(url, 20); ok != 20 {
		t.Fatalf("%d of 20 requests served", ok)
	}
	pids := m.workerPIDs()
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restart", func() bool {
		return strings.Contains(m.out.String(), "worker died unexpectedly; restarting") && len(m.workerPIDs()) == 2 &&
			strings.Count(m.out.String(), `"message":"worker listening"`) >= 3
	})
	scrapes := floodMetrics(t, admin, 20, time.Second)
	// More idle admin connections than the fd table holds.
	release := holdIdle(t, admin, 2*limit)
	waitFor(t, "the admin server's Accept error", func() bool { return strings.Contains(m.out.String(), "http: Accept error") })
	time.Sleep(2500 * time.Millisecond) // a few seconds of failing Accepts, rate-limited
	release()
	waitFor(t, "the master to serve again", func() bool { return serveN(url, 1) == 1 })
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rolling restart", func() bool { return strings.Contains(m.out.String(), "rolling restart done") })
	if ok := serveN(url, 20); ok != 20 {
		t.Errorf("%d of 20 requests served after SIGHUP", ok)
	}
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := m.wait(t, 30*time.Second, "master did not exit"); err != nil {
		t.Errorf("master exit: %v", err)
	}

	lines := jsonLines(t, m.out.String())
	var acceptErrors []time.Time
	var demoLines int
	durations := map[string]int{} // lines with each duration field
	for _, raw := range lines {
		l := decodeLine(t, raw)
		if l.Source == "admin server" {
			at, err := time.Parse(time.RFC3339Nano, l.Time)
			if err != nil {
				t.Errorf("time %q: %v", l.Time, err)
			}
			acceptErrors = append(acceptErrors, at)
		}
		if l.Message == "demo worker serving" && l.Worker > 0 {
			demoLines++
		}
		for _, f := range durationFields {
			v, ok := raw[f]
			if !ok {
				continue
			}
			durations[f]++
			s, isString := v.(string)
			if _, err := time.ParseDuration(s); !isString || err != nil {
				t.Errorf("%s is %v, want a duration with its unit: %v", f, v, raw)
			}
		}
		if l.Level == "error" && strings.Contains(fmt.Sprint(raw["error"]), "parent hasn't exited") {
			t.Errorf("tableflip's refusal logged as an error: %v", raw)
		}
	}
	if len(acceptErrors) == 0 {
		t.Error("no line from the admin server's ErrorLog")
	}
	for i := 1; i < len(acceptErrors); i++ {
		if d := acceptErrors[i].Sub(acceptErrors[i-1]); d < errorLogInterval-100*time.Millisecond {
			t.Errorf("admin server lines %d and %d only %v apart, want at least %v", i-1, i, d, errorLogInterval)
		}
	}
	// Two workers, a restart and two replacements: each logged as JSON.
	if demoLines < 5 {
		t.Errorf("%d JSON lines from demo workers starting, want at least 5", demoLines)
	}
	// The crash and the rolling restart log these.
	for _, f := range []string{"uptime", "restart_in"} {
		if durations[f] == 0 {
			t.Errorf("no line with %s", f)
		}
	}
	t.Logf("%d JSON lines; %d /metrics scrapes; %d admin server ErrorLog lines; duration fields %v", len(lines), scrapes, len(acceptErrors), durations)
}

// startUnderFDLimit starts the CLI under prlimit(1) with an fd limit of
// n, soft and hard, which its workers inherit; prlimit execs handoff, so
// the pid is the master's.
func startUnderFDLimit(t *testing.T, n int, args ...string) *master {
	t.Helper()
	if _, err := os.Stat("/usr/bin/prlimit"); err != nil {
		t.Skip("prlimit (util-linux) is not installed")
	}
	addr := proctest.FreeAddr(t)
	cmd := exec.Command("/usr/bin/prlimit", append([]string{fmt.Sprintf("--nofile=%d:%d", n, n), handoffBin, "--listen", addr, "--log-format", "json"}, args...)...)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	return launch(t, cmd, addr, out)
}

// holdIdle opens up to n connections to addr that send nothing, and
// returns a function that closes them; the test's end closes them too.
// Connections the kernel refuses are skipped.
func holdIdle(t *testing.T, addr string, n int) (release func()) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			continue
		}
		conns = append(conns, c)
	}
	release = func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
		conns = nil
	}
	t.Cleanup(release)
	return release
}

// floodMetrics runs scrapers clients, each on its own keep-alive
// connection, that GET /metrics one after another for d, and returns how
// many scrapes were answered.
func floodMetrics(t *testing.T, admin string, scrapers int, d time.Duration) int {
	t.Helper()
	stop := make(chan struct{})
	wait := startMetricsFlood(admin, scrapers, stop)
	time.Sleep(d)
	close(stop)
	return wait()
}

// maxScrapesPerScraper bounds each flood client's loop.
const maxScrapesPerScraper = 100000

// startMetricsFlood starts scrapers clients that GET /metrics one after
// another until stop is closed, each at most maxScrapesPerScraper times;
// wait waits for them and returns how many scrapes were answered.
func startMetricsFlood(admin string, scrapers int, stop <-chan struct{}) (wait func() int) {
	var g errgroup.Group
	var mu sync.Mutex
	answered := 0
	for i := 0; i < scrapers; i++ {
		g.Go(func() error {
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			client := &http.Client{Timeout: 5 * time.Second, Transport: tr}
			n := 0
			defer func() { mu.Lock(); answered += n; mu.Unlock() }()
			for j := 0; j < maxScrapesPerScraper; j++ {
				select {
				case <-stop:
					return nil
				default:
				}
				resp, err := client.Get("http://" + admin + "/metrics")
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == 200 {
					n++
				}
			}
			return nil
		})
	}
	return func() int {
		_ = g.Wait()
		mu.Lock()
		defer mu.Unlock()
		return answered
	}
}
