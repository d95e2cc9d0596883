//go:build linux

package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The fleet tests run one at a time (not t.Parallel): each runs HAProxy
// and three handoff CLIs, and HAProxy's health checks are timed.

// markDownBound is how long HAProxy may take to mark a host down after
// its checks start failing: inter × fall, with a generous margin.
const markDownBound = 3*checkInter*checkFall + time.Second

// TestFleetRealClientAddresses: clients on two hosts, through HAProxy's
// send-proxy-v2, reach workers on three handoff hosts, whose handlers see
// each client's own address and port, not HAProxy's. A PROXY header from
// anyone but HAProxy is refused.
func TestFleetRealClientAddresses(t *testing.T) {
	f := newFleet(t, 8, fleetWorkers)
	l := f.startLoad(t, loadMaxRequests)
	time.Sleep(2 * time.Second)
	results := l.stop()
	s := l.report(t, "real client addresses", results)
	if s.failed != 0 {
		t.Errorf("%d of %d requests failed (or saw another address than the client's), want 0", s.failed, s.total)
	}
	for _, c := range f.clients {
		if s.byClient[c.Name] == 0 {
			t.Errorf("no answer for %s", c.Name)
		}
	}
	for _, h := range f.hosts {
		if s.byHost[h.name] == 0 {
			t.Errorf("%s answered nothing: %v", h.name, s.byHost)
		}
	}
	seen := map[string]string{}
	for _, r := range results {
		if r.err == nil {
			seen[r.client+" -> "+r.host] = fmt.Sprintf("worker %d", r.worker)
		}
	}
	t.Logf("every answer carried the client's own address and port (%s at %v, %s at %v); pairs seen: %d of %d",
		f.clients[0].Name, f.clients[0].IPv4(), f.clients[1].Name, f.clients[1].IPv4(), len(seen), len(f.clients)*len(f.hosts))

	// From the host itself, not HAProxy: no header is fine, and the
	// handler sees the true peer; a header claiming another address is
	// refused.
	h := f.hosts[0]
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	conn, err := h.ns.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	local := conn.LocalAddr().String()
	if a, err := getOn(conn, "/", ""); err != nil || a.body != local {
		t.Errorf("a plain request from %s itself: %q, %v; want its own address %s", h.name, a.body, err, local)
	}
	conn, err = h.ns.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(requestTimeout))
	forged := "PROXY TCP4 203.0.113.9 " + h.ns.IPv4().String() + " 4444 80\r\nGET / HTTP/1.1\r\nHost: fleet\r\nConnection: close\r\n\r\n"
	if _, err := conn.Write([]byte(forged)); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
		resp.Body.Close()
		t.Errorf("a PROXY header from %s, not HAProxy, was answered %s; want it refused", h.name, resp.Status)
	}
}

// TestFleetDrainHost: SIGTERM to one host's master, whose --shutdown-delay
// is longer than HAProxy's inter × fall. Its /healthz turns 503, HAProxy
// marks it down and sends it nothing more, it drains and exits 0, and no
// request fails; HAProxy never even meets a refused connection. Started
// again, it is brought back and serves its share.
func TestFleetDrainHost(t *testing.T) {
	f := newFleet(t, 9, fleetWorkers)
	victim := f.hosts[0]
	before, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}
	l := f.startLoad(t, loadMaxRequests)
	time.Sleep(time.Second)

	pid, err := victim.signal(syscall.SIGTERM)
	if err != nil {
		t.Fatal(err)
	}
	termAt := time.Now()
	waitUntil(t, victim.name+"'s /healthz to answer 503", shutdownDelay, func() error {
		code, body, err := victim.adminGet("/healthz")
		if err == nil && code != http.StatusServiceUnavailable {
			err = fmt.Errorf("%d %q", code, body)
		}
		return err
	})
	unhealthyAt := time.Now()
	downAt := f.haproxy.waitStatus(t, victim.name, "DOWN", shutdownTimeout)
	exitErr, ok := victim.exited(shutdownDelay + shutdownTimeout)
	exitAt := time.Now()
	if !ok || exitErr != nil {
		t.Fatalf("master %d after SIGTERM: exited %v, error %v; want exit 0", pid, ok, exitErr)
	}
	time.Sleep(500 * time.Millisecond) // load with the host gone
	during, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}

	restartAt := time.Now()
	if err := victim.start(); err != nil {
		t.Fatal(err)
	}
	upAt := f.haproxy.waitStatus(t, victim.name, "UP", startTimeout)
	time.Sleep(2 * time.Second)
	results := l.stop()

	s := l.report(t, "drain and restart", results)
	t.Logf("SIGTERM to %s's master (pid %d, --shutdown-delay %v): /healthz 503 after %v, haproxy marked it DOWN after %v (inter %v × fall %d), master exited 0 after %v",
		victim.name, pid, shutdownDelay, unhealthyAt.Sub(termAt).Round(time.Millisecond), downAt.Sub(termAt).Round(time.Millisecond),
		checkInter, checkFall, exitAt.Sub(termAt).Round(time.Millisecond))
	t.Logf("restarted: haproxy marked it UP after %v (rise %d)", upAt.Sub(restartAt).Round(time.Millisecond), checkRise)
	if s.failed != 0 {
		t.Errorf("%d of %d requests failed during the drain, want 0", s.failed, s.total)
	}
	if d := downAt.Sub(termAt); d >= shutdownDelay {
		t.Errorf("haproxy marked %s down %v after SIGTERM, not within the shutdown delay %v", victim.name, d, shutdownDelay)
	}
	b, m := before[victim.name], during[victim.name]
	if m.econ != b.econ || m.wredis != b.wredis || m.wretr != b.wretr {
		t.Errorf("haproxy met refused connections on %s: econ %d→%d, retries %d→%d, redispatched %d→%d; want none",
			victim.name, b.econ, m.econ, b.wretr, m.wretr, b.wredis, m.wredis)
	}
	var sentAfterDown, afterUp int
	afterUpBy := map[string]int{}
	for _, r := range results {
		if r.err == nil && r.host == victim.name && r.start.After(downAt) && r.start.Before(restartAt) {
			sentAfterDown++
		}
		if r.err == nil && r.start.After(upAt) {
			afterUp++
			afterUpBy[r.host]++
		}
	}
	if sentAfterDown != 0 {
		t.Errorf("%s answered %d requests that began after haproxy marked it down, want 0", victim.name, sentAfterDown)
	}
	t.Logf("after it came back: %d requests, by host %s", afterUp, split(afterUpBy))
	if got, fair := afterUpBy[victim.name], afterUp/len(f.hosts); got == 0 || got < fair/2 {
		t.Errorf("back up, %s served %d of %d requests, want its share (about %d)", victim.name, got, afterUp, fair)
	}
}

// TestFleetRollingRestartAndUpgrade: SIGHUP, then SIGUSR2, to one host
// while the clients run: no request fails, and HAProxy never marks the
// host down, nor meets a refused connection there.
func TestFleetRollingRestartAndUpgrade(t *testing.T) {
	f := newFleet(t, 10, fleetWorkers)
	victim := f.hosts[1]
	before, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}
	// Watch HAProxy's view of the host throughout.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	var (
		watchMu  sync.Mutex
		statuses = map[string]int{} // status seen: polls
		watchWG  sync.WaitGroup
	)
	watchWG.Add(1)
	go func() {
		defer watchWG.Done()
		for watchCtx.Err() == nil {
			if st, err := f.haproxy.stats(); err == nil {
				watchMu.Lock()
				statuses[st[victim.name].status]++
				watchMu.Unlock()
			}
			select {
			case <-watchCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(func() { stopWatch(); watchWG.Wait() })

	l := f.startLoad(t, loadMaxRequests)
	time.Sleep(time.Second)

	old, err := victim.workerStats()
	if err != nil {
		t.Fatal(err)
	}
	oldPIDs := make([]int, len(old))
	for i, w := range old {
		oldPIDs[i] = w.PID
	}
	hupAt := time.Now()
	if _, err := victim.signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "every worker of "+victim.name+" to be replaced", shutdownTimeout, func() error {
		ws, err := victim.workerStats()
		if err != nil {
			return err
		}
		for _, w := range ws {
			if slices.Contains(oldPIDs, w.PID) {
				return fmt.Errorf("worker %d (pid %d) is still there", w.ID, w.PID)
			}
		}
		if n := countListening(ws); n != victim.workers || len(ws) != victim.workers {
			return fmt.Errorf("%d of %d workers listening", n, victim.workers)
		}
		return nil
	})
	reloadedAt := time.Now()
	time.Sleep(500 * time.Millisecond)

	oldMaster := victim.masterPID()
	usr2At := time.Now()
	if _, err := victim.signal(syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	exitErr, ok := victim.exited(startTimeout + shutdownTimeout)
	if !ok || exitErr != nil {
		t.Fatalf("the old master %d after SIGUSR2: exited %v, error %v; want exit 0", oldMaster, ok, exitErr)
	}
	newMaster := victim.masterPID()
	if newMaster == oldMaster {
		t.Fatalf("after SIGUSR2 the pid file still names the old master %d", oldMaster)
	}
	if err := victim.waitReady(newMaster); err != nil {
		t.Fatal(err)
	}
	upgradedAt := time.Now()
	time.Sleep(time.Second)
	results := l.stop()
	stopWatch()
	watchWG.Wait()
	after, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}

	s := l.report(t, "SIGHUP then SIGUSR2", results)
	t.Logf("%s: SIGHUP replaced its %d workers in %v; SIGUSR2 replaced master %d by %d in %v",
		victim.name, victim.workers, reloadedAt.Sub(hupAt).Round(time.Millisecond), oldMaster, newMaster, upgradedAt.Sub(usr2At).Round(time.Millisecond))
	watchMu.Lock()
	t.Logf("haproxy's status of %s, polled every 50ms throughout: %v; show servers state:\n%s", victim.name, statuses, f.haproxy.serverState())
	for st := range statuses {
		if st != "UP" && !strings.HasPrefix(st, "UP ") {
			t.Errorf("haproxy saw %s as %q during the reload or upgrade; want UP throughout", victim.name, st)
		}
	}
	watchMu.Unlock()
	if s.failed != 0 {
		t.Errorf("%d of %d requests failed during SIGHUP and SIGUSR2, want 0", s.failed, s.total)
	}
	b, a := before[victim.name], after[victim.name]
	if a.chkdown != b.chkdown {
		t.Errorf("haproxy marked %s down %d times, want never", victim.name, a.chkdown-b.chkdown)
	}
	if a.econ != b.econ || a.wretr != b.wretr || a.wredis != b.wredis {
		t.Errorf("haproxy met refused connections on %s: econ %d→%d, retries %d→%d, redispatched %d→%d; want none",
			victim.name, b.econ, a.econ, b.wretr, a.wretr, b.wredis, a.wredis)
	}
	served := 0
	for _, r := range results {
		if r.err == nil && r.host == victim.name && r.start.After(upgradedAt) {
			served++
		}
	}
	if served == 0 {
		t.Errorf("%s served nothing after its upgrade", victim.name)
	}
}

// TestFleetHostKilled: SIGKILL to one host's master and all its workers.
// Only requests in progress there fail (each client has at most one in
// flight), HAProxy marks the host down within inter × fall (with a
// margin), and the other hosts carry the load: nothing fails after that.
func TestFleetHostKilled(t *testing.T) {
	f := newFleet(t, 11, fleetWorkers)
	victim := f.hosts[2]
	l := f.startLoad(t, loadMaxRequests)
	time.Sleep(time.Second)
	pid := victim.masterPID()
	killAt := time.Now()
	if err := victim.kill(); err != nil {
		t.Fatal(err)
	}
	deadAt := time.Now() // every process of the host is gone
	downAt := f.haproxy.waitStatus(t, victim.name, "DOWN", startTimeout)
	time.Sleep(1500 * time.Millisecond)
	results := l.stop()

	s := l.report(t, "a host killed", results)
	t.Logf("SIGKILL to %s's master (pid %d) and workers: all gone after %v; haproxy marked it DOWN %v after that (inter %v × fall %d; bound %v)",
		victim.name, pid, deadAt.Sub(killAt).Round(time.Millisecond), downAt.Sub(deadAt).Round(time.Millisecond), checkInter, checkFall, markDownBound)
	if s.failed > loadConcurrency {
		t.Errorf("%d requests failed, more than the %d that could have been in progress on %s", s.failed, loadConcurrency, victim.name)
	}
	if d := downAt.Sub(deadAt); d > markDownBound {
		t.Errorf("haproxy marked %s down %v after its processes were gone, want within %v", victim.name, d, markDownBound)
	}
	failedAfterDown := 0
	afterDown := map[string]int{}
	for _, r := range results {
		if !r.start.After(downAt) {
			continue
		}
		if r.err != nil {
			failedAfterDown++
		} else {
			afterDown[r.host]++
		}
	}
	t.Logf("after it was marked down: by host %s, %d failed", split(afterDown), failedAfterDown)
	if failedAfterDown != 0 {
		t.Errorf("%d requests that began after haproxy marked %s down failed, want 0", failedAfterDown, victim.name)
	}
	for _, h := range f.hosts {
		if h != victim && afterDown[h.name] == 0 {
			t.Errorf("%s served nothing after %s died: %v", h.name, victim.name, afterDown)
		}
	}
	if afterDown[victim.name] != 0 {
		t.Errorf("the dead %s answered %d requests", victim.name, afterDown[victim.name])
	}
	if err, ok := victim.exited(shutdownTimeout); !ok || err == nil {
		t.Errorf("the killed master: exited %v, %v; want killed", ok, err)
	}
}

// TestFleetBalance: a fixed number of new connections over 3 hosts × 3
// workers. HAProxy's round-robin splits them across hosts, and each
// host's handoff splits its share across its workers (GET /workers).
func TestFleetBalance(t *testing.T) {
	const (
		workers  = 3
		requests = 1800
	)
	f := newFleet(t, 12, workers)
	before, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}
	l := f.startLoad(t, requests)
	results := l.wait()
	s := l.report(t, "balance", results)
	if s.failed != 0 || s.total != requests {
		t.Fatalf("%d of %d requests failed, want %d requests and none failed", s.failed, s.total, requests)
	}
	after, err := f.haproxy.stats()
	if err != nil {
		t.Fatal(err)
	}
	acrossHosts := map[string]int{}
	dispatched := 0
	for _, h := range f.hosts {
		acrossHosts[h.name] = after[h.name].stot - before[h.name].stot
		ws, err := h.workerStats()
		if err != nil {
			t.Fatal(err)
		}
		byWorker := map[int]int{}
		for _, w := range ws {
			byWorker[w.ID] = int(w.Dispatched)
			dispatched += int(w.Dispatched)
		}
		hostTotal := s.byHost[h.name]
		t.Logf("  handoff on %s over %d workers (GET /workers dispatched): %s max-min %d (%.1f%% of its %d)",
			h.name, workers, split(byWorker), spread(byWorker, workers), pct(spread(byWorker, workers), hostTotal), hostTotal)
		for id, n := range byWorker {
			if n < hostTotal/workers/2 {
				t.Errorf("%s's worker %d was handed %d of the host's %d connections, under half its share", h.name, id, n, hostTotal)
			}
		}
		if len(byWorker) != workers {
			t.Errorf("%s has workers %v, want %d", h.name, byWorker, workers)
		}
	}
	t.Logf("  haproxy round-robin over %d hosts (stot): %s max-min %d (%.1f%% of %d)",
		len(f.hosts), split(acrossHosts), spread(acrossHosts, len(f.hosts)), pct(spread(acrossHosts, len(f.hosts)), requests), requests)
	for _, h := range f.hosts {
		if n := s.byHost[h.name]; n < requests/len(f.hosts)/2 {
			t.Errorf("%s answered %d of %d requests, under half its share", h.name, n, requests)
		}
	}
	// A connection reclaimed from a worker and re-dispatched counts twice.
	t.Logf("  the masters dispatched %d connections for the %d requests", dispatched, requests)
	if dispatched < requests {
		t.Errorf("the hosts' masters dispatched %d connections in all, fewer than the %d requests", dispatched, requests)
	}
}

// pct is part as a percentage of whole.
func pct(part, whole int) float64 {
	if whole == 0 {
		return 0
	}
	return 100 * float64(part) / float64(whole)
}
