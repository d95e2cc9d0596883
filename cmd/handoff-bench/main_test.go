//go:build linux

package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestParseFlags(t *testing.T) {
	t.Parallel()
	c, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.duration != defaultDuration || c.out != defaultOut || !slices.Equal(c.servers, allServers) || !slices.Equal(c.workloads, allWorkloads) || !c.perfStat {
		t.Errorf("defaults: %+v", c)
	}
	for _, want := range []string{"new-conn-c1", "new-conn-c4"} {
		if !slices.Contains(c.workloads, want) {
			t.Errorf("default workloads %q lack %s", c.workloads, want)
		}
	}
	c, err = parseFlags([]string{"-servers", "handoff-ll, reuseport", "-workloads", "skewed,new-conn-c1", "-duration", "5s", "-perf-stat=false"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.servers, []string{"reuseport", "handoff-ll"}) || !slices.Equal(c.workloads, []string{"new-conn-c1", "skewed"}) || c.duration != 5*time.Second || c.perfStat {
		t.Errorf("filters: servers %q workloads %q duration %s perf-stat %v", c.servers, c.workloads, c.duration, c.perfStat)
	}
	// A role skips the bench's checks.
	if c, err = parseFlags([]string{"-role=worker", "-port=1"}, io.Discard); err != nil || c.role != "worker" || c.port != 1 {
		t.Errorf("role flags: %+v, %v", c, err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown server", []string{"-servers", "nginx"}, `unknown name "nginx"`},
		{"empty filter", []string{"-workloads", ","}, "no names"},
		{"short duration", []string{"-duration", "100ms"}, "-duration"},
		{"no workers", []string{"-workers", "0"}, "-workers"},
		{"threads above conns", []string{"-connections", "2", "-threads", "3"}, "-threads"},
		{"big burn", []string{"-burn", "1s"}, "-burn"},
		{"burn fraction", []string{"-burn-fraction", "1.5"}, "-burn-fraction"},
		{"no loadgen", []string{"-loadgen", "go"}, "-loadgen"},
		{"rounds", []string{"-rounds", "0"}, "-rounds"},
		{"arguments", []string{"extra"}, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := parseFlags(tc.args, io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseFlags(%q) error = %v, want one containing %q", tc.args, err, tc.want)
			}
		})
	}
}

func TestInterleave(t *testing.T) {
	t.Parallel()
	s := []string{"a", "b", "c"}
	for round, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := interleave(s, round); !slices.Equal(got, want) {
			t.Errorf("interleave round %d = %q, want %q", round, got, want)
		}
	}
	if !slices.Equal(s, []string{"a", "b", "c"}) {
		t.Errorf("interleave changed its input: %q", s)
	}
}

func TestWithoutEnv(t *testing.T) {
	t.Parallel()
	got := withoutEnv([]string{"A=1", "GOMAXPROCS=4", "GOMAXPROCSX=2", "B=2"}, "GOMAXPROCS")
	if want := []string{"A=1", "GOMAXPROCSX=2", "B=2"}; !slices.Equal(got, want) {
		t.Errorf("withoutEnv = %q, want %q", got, want)
	}
	if got := withoutNode([]string{"single", "node-rr", "handoff-rr", "node-none"}); !slices.Equal(got, []string{"single", "handoff-rr"}) {
		t.Errorf("withoutNode = %q", got)
	}
}

func TestBurnParam(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		q    string
		want time.Duration
	}{
		{"burn=3ms", 3 * time.Millisecond},
		{"x=1&burn=250us", 250 * time.Microsecond},
		{"burn=100ms", 100 * time.Millisecond},
		{"burn=101ms", 0},
		{"burn=-1ms", 0},
		{"burn=3", 0},
		{"burn=%zz", 0},
		{"other=1", 0},
	} {
		if got := burnParam(tc.q); got != tc.want {
			t.Errorf("burnParam(%q) = %s, want %s", tc.q, got, tc.want)
		}
	}
}

func TestBenchHandler(t *testing.T) {
	t.Parallel()
	var served atomic.Uint64
	srv := httptest.NewServer(benchHandler(&served))
	defer srv.Close()
	get := func(path string) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %v", path, resp.StatusCode, err)
		}
		return string(b), time.Since(start)
	}
	if body, _ := get("/"); body != "hello world\n" {
		t.Errorf("body = %q", body)
	}
	if _, took := get("/?burn=20ms"); took < 20*time.Millisecond {
		t.Errorf("?burn=20ms answered after %s", took)
	}
	if served.Load() != 2 {
		t.Errorf("served = %d, want 2", served.Load())
	}
	srv.Client().CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
}
