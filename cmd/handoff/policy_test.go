//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
)

// clientFrom is an HTTP client whose every request is a new connection
// from the loopback address ip, so that the master's policy places each.
func clientFrom(ip net.IP) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: 10 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
}

// slotsOf maps each worker's id to its slot, from /workers.
func slotsOf(t *testing.T, admin string) map[int]int {
	t.Helper()
	slots := map[int]int{}
	for _, w := range workersOf(t, admin) {
		slots[w.ID] = w.Slot
	}
	return slots
}

// ipHashWorkers sends 20 requests, each on a new connection, from each of
// 127.0.0.2 to 127.0.0.11, checks that all of an address's land on one
// worker, and returns each address's worker.
func ipHashWorkers(t *testing.T, url string) map[string]int {
	t.Helper()
	const clients, requests = 10, 20
	workers := map[string]int{}
	for c := range clients {
		ip := net.IPv4(127, 0, 0, byte(2+c))
		client := clientFrom(ip)
		var got []int
		for range requests {
			id, err := served(client, url)
			if err != nil {
				t.Fatalf("from %v: %v", ip, err)
			}
			got = append(got, id)
		}
		client.CloseIdleConnections()
		slices.Sort(got)
		if got = slices.Compact(got); len(got) != 1 {
			t.Fatalf("the %d requests from %v went to workers %v, want one", requests, ip, got)
		}
		workers[ip.String()] = got[0]
	}
	return workers
}

// --policy ip-hash: every new connection from one client address goes to
// one worker, the addresses are spread over the workers, and after a
// reload (SIGHUP), which replaces every worker, each address goes to the
// new worker of the same slot: the hash is of slots, not worker ids.
func TestCLIIPHashIsStickyAcrossReload(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "4", "--policy", "ip-hash", "--admin", admin)
	url := "http://" + m.addr + "/"
	before := ipHashWorkers(t, url)
	slots := slotsOf(t, admin)
	used := map[int]bool{}
	for _, id := range before {
		used[id] = true
	}
	if len(used) < 2 {
		t.Fatalf("10 addresses all went to one worker: %v", before)
	}

	old := m.workerPIDs()
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every old worker to exit after SIGHUP", func() bool {
		for _, p := range old {
			if proctest.Alive(p) {
				return false
			}
		}
		return true
	})
	waitFor(t, "4 new workers listening", func() bool {
		ws := workersOf(t, admin)
		n := 0
		for _, w := range ws {
			if _, replaced := slots[w.ID]; w.State == "listening" && !replaced && !slices.Contains(old, w.PID) {
				n++
			}
		}
		return n == 4 && len(ws) == 4
	})
	after := ipHashWorkers(t, url)
	newSlots := slotsOf(t, admin)
	for ip, id := range after {
		if _, ok := slots[id]; ok {
			t.Errorf("%s went to worker %d, which the reload replaced", ip, id)
		}
		if was, now := slots[before[ip]], newSlots[id]; was != now {
			t.Errorf("%s went to slot %d (worker %d) before the reload and to slot %d (worker %d) after it", ip, was, before[ip], now, id)
		}
	}
	t.Logf("address → worker before %v, after %v; slots before %v, after %v", before, after, slots, newSlots)
}

// idleConn opens a keep-alive connection to addr, makes one request on
// it and leaves it open and idle; it returns the worker that answered.
func idleConn(t *testing.T, addr string) (net.Conn, int) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: test\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	id, err := strconv.Atoi(resp.Header.Get("X-Worker-Id"))
	if err != nil {
		t.Fatal(err)
	}
	return c, id
}

// --policy least-requests routes by requests in flight, not connections:
// one worker holds a slow request on one connection, the other holds
// three idle keep-alive connections; every new connection goes to the
// idle one. The controls: least-loaded sends them all to the busy worker,
// which has fewer connections, and round-robin every other one.
func TestCLILeastRequestsAvoidsBusyWorker(t *testing.T) {
	for _, tt := range []struct {
		policy string
		want   func(toBusy, n int) bool // of the n quick requests
	}{
		{policy: "least-requests", want: func(toBusy, n int) bool { return toBusy == 0 }},
		{policy: "least-loaded", want: func(toBusy, n int) bool { return toBusy == n }},
		{policy: "round-robin", want: func(toBusy, n int) bool { return toBusy == n/2 }},
	} {
		t.Run(tt.policy, func(t *testing.T) {
			admin := proctest.FreeAddr(t)
			m := startMaster(t, "--workers", "2", "--policy", tt.policy, "--admin", admin)
			url := "http://" + m.addr + "/"
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			// settled waits until the master sees the busy worker with
			// onBusy connections and the other with onIdle: a worker
			// answers a request before it counts it done.
			busy, idle := 0, 0
			settled := func(onBusy, onIdle int) {
				t.Helper()
				waitFor(t, "the quick requests' connections closed", func() bool {
					for _, w := range workersOf(t, admin) {
						if w.ID == busy && w.Active != onBusy || w.ID != busy && w.Active != onIdle {
							return false
						}
					}
					return true
				})
			}

			// A slow request holds one worker busy until the test ends.
			ctx, cancel := context.WithCancel(context.Background())
			slow := make(chan error, 1)
			t.Cleanup(func() { cancel(); <-slow })
			go func() {
				req, _ := http.NewRequestWithContext(ctx, "GET", url+"?delay=50s", nil)
				resp, err := client.Do(req)
				if err == nil {
					resp.Body.Close()
					err = fmt.Errorf("the slow request ended: %s", resp.Status)
				}
				slow <- err
			}()
			waitFor(t, "one worker to report a request in flight", func() bool {
				for _, w := range workersOf(t, admin) {
					if w.Busy != nil && *w.Busy == 1 {
						busy = w.ID
						return true
					}
				}
				return false
			})
			// Three idle connections on the other worker. Those that the
			// policy puts on the busy one are kept until then (or
			// least-loaded would put every next one there too), then
			// closed.
			var idles, surplus []net.Conn
			t.Cleanup(func() {
				for _, c := range append(idles, surplus...) {
					c.Close()
				}
			})
			for tries := 0; len(idles) < 3; tries++ {
				if tries == 30 {
					t.Fatalf("30 connections and only %d reached the worker without the slow request", len(idles))
				}
				settled(1+len(surplus), len(idles))
				c, id := idleConn(t, m.addr)
				if id == busy {
					surplus = append(surplus, c)
					continue
				}
				idle = id
				idles = append(idles, c)
			}
			for _, c := range surplus {
				c.Close()
			}
			surplus = nil

			const n = 20
			counts := map[int]int{}
			for i := range n {
				settled(1, len(idles))
				id, err := served(client, url)
				if err != nil {
					t.Fatalf("request %d: %v", i, err)
				}
				counts[id]++
			}
			select {
			case err := <-slow:
				t.Fatalf("the slow request is over before the quick ones are: %v", err)
			default:
			}
			t.Logf("%s: worker %d has the slow request, worker %d %d idle connections; %d quick requests went %v", tt.policy, busy, idle, len(idles), n, counts)
			if !tt.want(counts[busy], n) {
				t.Errorf("%s: %d of %d quick requests went to the busy worker %d: %v", tt.policy, counts[busy], n, busy, counts)
			}
		})
	}
}
