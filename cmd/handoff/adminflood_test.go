//go:build linux

package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
	"golang.org/x/sync/errgroup"
)

// serveAdmin serves at most maxConns connections at once; the others wait
// in the backlog and are served as slots free.
func TestAdminServerCapsConnections(t *testing.T) {
	t.Parallel()
	const maxConns, clients = 2, 5
	var active, most atomic.Int32
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := active.Add(1)
		defer active.Add(-1)
		for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
		}
		<-release
	})
	ln := listenLoopback(t)
	a := serveAdmin(ln, h, maxConns, discardLogger())
	t.Cleanup(a.stop)
	var g errgroup.Group
	for i := 0; i < clients; i++ {
		g.Go(func() error {
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := client.Get("http://" + ln.Addr().String() + "/")
			if err != nil {
				return err
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			return resp.Body.Close()
		})
	}
	waitFor(t, "the first requests", func() bool { return active.Load() >= maxConns })
	time.Sleep(200 * time.Millisecond) // time for more to come in, were there no cap
	if n := most.Load(); n != maxConns {
		t.Errorf("%d requests at once, want %d", n, maxConns)
	}
	close(release)
	if err := g.Wait(); err != nil {
		t.Errorf("a request past the cap failed instead of waiting: %v", err)
	}
	if n := most.Load(); n != maxConns {
		t.Errorf("%d requests at once, want %d", n, maxConns)
	}
}

// With 300 idle connections held on the admin port of a master whose fd
// limit is 256, the main port serves every request: the admin server
// takes at most --admin-max-conns of the master's fds.
func TestCLIAdminIdleConnsLeaveMainPortServing(t *testing.T) {
	const limit, idle, requests, clients = 256, 300, 200, 4
	admin := proctest.FreeAddr(t)
	m := startUnderFDLimit(t, limit, "--workers", "2", "--admin", admin)
	before := m.fdCount(t)
	release := holdIdle(t, admin, idle)
	defer release()
	waitFor(t, "the admin server to take its share", func() bool { return m.fdCount(t) >= before+defaultAdminMaxConns })
	held := m.fdCount(t)

	url := "http://" + m.addr + "/"
	var g errgroup.Group
	var mu sync.Mutex
	var failed int
	var first error
	start := time.Now()
	for i := 0; i < clients; i++ {
		g.Go(func() error {
			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for j := 0; j < requests/clients; j++ {
				resp, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = &statusError{resp.StatusCode}
					}
				}
				if err != nil {
					mu.Lock()
					failed++
					if first == nil {
						first = err
					}
					mu.Unlock()
				}
			}
			return nil
		})
	}
	_ = g.Wait()
	elapsed := time.Since(start)
	after := m.fdCount(t)
	t.Logf("master fds: %d before, %d with %d idle admin connections held, %d after %d requests in %v; %d failed",
		before, held, idle, after, requests, elapsed, failed)
	if failed > 0 {
		t.Errorf("%d of %d main-port requests failed with %d idle admin connections held; first: %v", failed, requests, idle, first)
	}
	if held > before+defaultAdminMaxConns+1 {
		t.Errorf("the admin server holds %d fds, want at most --admin-max-conns+1 = %d", held-before, defaultAdminMaxConns+1)
	}
}

type statusError struct{ code int }

func (e *statusError) Error() string { return http.StatusText(e.code) }

// plainBin is the CLI built without -race, for the benchmark: a race
// build's costs would drown the figures. Built once, on first use.
var plainBin struct {
	once sync.Once
	path string
	err  error
}

func plainHandoff(b *testing.B) string {
	b.Helper()
	if bin := os.Getenv("HANDOFF_BENCH_BIN"); bin != "" {
		return bin // another build, to compare
	}
	plainBin.once.Do(func() {
		plainBin.path = filepath.Join(filepath.Dir(handoffBin), "handoff-plain")
		out, err := exec.Command("go", "build", "-buildvcs=false", "-o", plainBin.path, ".").CombinedOutput()
		if err != nil {
			plainBin.err = fmt.Errorf("building handoff: %v\n%s", err, out)
		}
	})
	if plainBin.err != nil {
		b.Fatal(plainBin.err)
	}
	return plainBin.path
}

// BenchmarkMetricsFlood measures what a /metrics flood (20 scrapers, one
// request at a time each) costs the master's dispatch, against what the
// same flood costs it when aimed at another master on the same machine
// in the same run: the bound is a ratio of 1.5. Each iteration
// runs one round of three interleaved phases (no flood, flood at the other
// master, flood at this one, in rotating order) of a fixed number of
// requests on new connections, so each is dispatched. It reports the
// median of each phase's duration over the rounds as slowdowns against
// no flood, and their ratio:
//
//	go test -run '^$' -bench MetricsFlood -benchtime 9x ./cmd/handoff
//
// HANDOFF_BENCH_BIN=path runs that binary instead, such as an older build.
//
// It is a benchmark rather than a test because the ratio moves with
// whatever else runs on the machine.
func BenchmarkMetricsFlood(b *testing.B) {
	const (
		scrapers = 20
		requests = 2000 // per phase
		clients  = 4
	)
	bin := plainHandoff(b)
	start := func(admin string) *master {
		addr := proctest.FreeAddr(b)
		cmd := exec.Command(bin, "--listen", addr, "--log-format", "json", "--workers", "2", "--admin", admin)
		out := &proctest.Output{}
		cmd.Stdout, cmd.Stderr = out, out
		return launch(b, cmd, addr, out)
	}
	targetAdmin, controlAdmin := proctest.FreeAddr(b), proctest.FreeAddr(b)
	target := start(targetAdmin)
	start(controlAdmin)
	url := "http://" + target.addr + "/"

	// phase serves requests on target's main port while flooding admin
	// (none if ""), and returns how long they took, their p99 and how
	// many scrapes were answered.
	phase := func(admin string) (took, p99 time.Duration, scrapes int) {
		var wait func() int
		stop := make(chan struct{})
		if admin != "" {
			wait = startMetricsFlood(admin, scrapers, stop)
			time.Sleep(100 * time.Millisecond) // the flood under way
		}
		lat := make([]time.Duration, 0, requests)
		var mu sync.Mutex
		var g errgroup.Group
		t0 := time.Now()
		for i := 0; i < clients; i++ {
			g.Go(func() error {
				client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
				for j := 0; j < requests/clients; j++ {
					r0 := time.Now()
					resp, err := client.Get(url)
					if err != nil {
						return err
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					mu.Lock()
					lat = append(lat, time.Since(r0))
					mu.Unlock()
				}
				return nil
			})
		}
		err := g.Wait()
		took = time.Since(t0)
		if wait != nil {
			close(stop)
			scrapes = wait()
		}
		if err != nil {
			b.Fatalf("main-port request: %v", err)
		}
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		return took, lat[len(lat)*99/100], scrapes
	}
	names := []string{"none", "control", "target"}
	admins := map[string]string{"none": "", "control": controlAdmin, "target": targetAdmin}
	took := map[string][]time.Duration{}
	p99 := map[string][]time.Duration{}
	scraped := map[string]int{}
	phase("") // warm up
	b.ResetTimer()
	for r := 0; r < b.N; r++ {
		for i := range names {
			name := names[(r+i)%len(names)]
			d, p, s := phase(admins[name])
			took[name] = append(took[name], d)
			p99[name] = append(p99[name], p)
			scraped[name] += s
		}
	}
	b.StopTimer()
	median := func(ds []time.Duration) time.Duration {
		s := append([]time.Duration(nil), ds...)
		sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
		return s[len(s)/2]
	}
	base := median(took["none"])
	slowTarget := float64(median(took["target"])) / float64(base)
	slowControl := float64(median(took["control"])) / float64(base)
	for _, name := range names {
		b.Logf("flood at %-7s: %d requests in median %v (%.0f req/s), p99 median %v; %d scrapes answered in %d rounds",
			name, requests, median(took[name]), float64(requests)/median(took[name]).Seconds(), median(p99[name]), scraped[name], b.N)
	}
	b.ReportMetric(slowTarget, "slowdown-target-x")
	b.ReportMetric(slowControl, "slowdown-control-x")
	b.ReportMetric(slowTarget/slowControl, "ratio")
	b.ReportMetric(float64(requests)/median(took["none"]).Seconds(), "req/s-no-flood")
	b.ReportMetric(float64(requests)/median(took["target"]).Seconds(), "req/s-flood-target")
}
