//go:build linux

package main

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// wrkOutput is wrk's own summary followed by the block the script prints.
const wrkOutput = `Running 5s test @ http://127.0.0.1:40000/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   802.31us    1.10ms  40.12ms   95.12%
    Req/Sec    40.01k     3.12k   45.00k    70.00%
  400123 requests in 5.00s, 48.84MB read
Requests/sec:  80012.34
Transfer/sec:      9.77MB
handoff-bench-wrk-begin
requests 400123
duration_us 5000456
errors_connect 0
errors_read 3
errors_write 0
errors_status 2
errors_timeout 1
p50_us 612
p90_us 1.5e+03
p99_us 4012.0
max_us 40120
sent_keepalive 300000
sent_close 100200
sent_burn 40000
handoff-bench-wrk-end
`

func TestParseWrk(t *testing.T) {
	t.Parallel()
	r, err := parseWrk([]byte(wrkOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := loadResult{
		Requests: 400123, Elapsed: 5000456 * time.Microsecond,
		P50: 612 * time.Microsecond, P90: 1500 * time.Microsecond, P99: 4012 * time.Microsecond, Max: 40120 * time.Microsecond,
		Errors:    errorCounts{Read: 3, Status: 2, Timeout: 1},
		KeepAlive: 300000, Close: 100200, Burn: 40000,
	}
	if r != want {
		t.Errorf("parseWrk:\n got %+v\nwant %+v", r, want)
	}
	if got := r.Errors.total(); got != 6 {
		t.Errorf("errors total = %d, want 6", got)
	}
	if rps := r.reqPerSec(); rps < 80017 || rps > 80018 {
		t.Errorf("reqPerSec = %f, want about 80017.3", rps)
	}
}

func TestParseWrkErrors(t *testing.T) {
	t.Parallel()
	block := func(lines ...string) string {
		return "noise\n" + wrkBegin + "\n" + strings.Join(lines, "\n") + "\n" + wrkEnd + "\n"
	}
	for _, tc := range []struct {
		name, out, want string
	}{
		{"empty", "", "no results block"},
		{"wrk summary only", "Requests/sec: 1000\n", "no results block"},
		{"no end", wrkBegin + "\nrequests 1\n", "no end marker"},
		{"end first", wrkEnd + "\n", "end marker before begin"},
		{"missing p99", block("requests 1", "duration_us 1", "p50_us 1"), "no p99_us"},
		{"bad number", block("requests many"), "bad number"},
		{"negative", block("requests -1"), "bad number"},
		{"no value", block("requests"), "bad line"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseWrk([]byte(tc.out))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseWrk error = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestWrkScript(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		workload string
		want     []string
		notWant  []string
	}{
		{"keep-alive", []string{"function done", wrkBegin, wrkEnd, "latency:percentile(99)"}, []string{"function request", "sent_burn"}},
		{"new-conn", []string{"function done"}, []string{"function request"}},
		{"skewed", []string{"function request", "function setup", `"/?burn=3ms"`, "math.random() < 0.1", "sent_keepalive", `h["Connection"] = "close"`}, nil},
	} {
		t.Run(tc.workload, func(t *testing.T) {
			t.Parallel()
			s := wrkScript(loadSpec{workload: tc.workload, burn: 3 * time.Millisecond, burnFrac: 0.1})
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("script lacks %q:\n%s", w, s)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(s, w) {
					t.Errorf("script has %q:\n%s", w, s)
				}
			}
		})
	}
}

func TestWrkArgs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		spec loadSpec
		want []string
	}{
		{"keep-alive", loadSpec{workload: "keep-alive", port: 8080, duration: 5 * time.Second, conns: 64, threads: 2},
			[]string{"-t", "2", "-c", "64", "-d", "5s", "-T", "2s", "-s", "x.lua", "http://127.0.0.1:8080/"}},
		{"new-conn rounds up", loadSpec{workload: "new-conn", port: 1, duration: 1500 * time.Millisecond, conns: 8, threads: 1},
			[]string{"-t", "1", "-c", "8", "-d", "2s", "-T", "2s", "-s", "x.lua", "-H", "Connection: close", "http://127.0.0.1:1/"}},
		{"skewed needs two threads", loadSpec{workload: "skewed", port: 1, duration: time.Second, conns: 1, threads: 1},
			[]string{"-t", "2", "-c", "2", "-d", "1s", "-T", "2s", "-s", "x.lua", "http://127.0.0.1:1/"}},
		{"new-conn-c1", newLoadSpec(&config{duration: 3 * time.Second, conns: 64, threads: 2}, "new-conn-c1", 9),
			[]string{"-t", "1", "-c", "1", "-d", "3s", "-T", "2s", "-s", "x.lua", "-H", "Connection: close", "http://127.0.0.1:9/"}},
		{"new-conn-c4", newLoadSpec(&config{duration: 3 * time.Second, conns: 64, threads: 2}, "new-conn-c4", 9),
			[]string{"-t", "1", "-c", "4", "-d", "3s", "-T", "2s", "-s", "x.lua", "-H", "Connection: close", "http://127.0.0.1:9/"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if got := wrkArgs(tc.spec, "x.lua"); !slices.Equal(got, tc.want) {
				t.Errorf("wrkArgs = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNewLoadSpec(t *testing.T) {
	t.Parallel()
	c := &config{duration: 5 * time.Second, conns: 64, threads: 2, burn: 3 * time.Millisecond, burnFrac: 0.1}
	for _, tc := range []struct {
		workload       string
		conns, threads int
	}{
		{"keep-alive", 64, 2},
		{"new-conn", 64, 2},
		{"new-conn-c1", 1, 1},
		{"new-conn-c4", 4, 1},
		{"skewed", 64, 2},
	} {
		s := newLoadSpec(c, tc.workload, 8080)
		if s.conns != tc.conns || s.threads != tc.threads || s.port != 8080 || s.duration != c.duration || s.burn != c.burn || s.burnFrac != c.burnFrac || s.workload != tc.workload {
			t.Errorf("newLoadSpec(%s) = %+v, want %d connections on %d threads", tc.workload, s, tc.conns, tc.threads)
		}
	}
	for _, wl := range allWorkloads {
		if want := strings.HasPrefix(wl, "new-conn"); newConn(wl) != want {
			t.Errorf("newConn(%s) = %v, want %v", wl, !want, want)
		}
	}
}
