//go:build linux

package integration_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/netnstest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

const hello = "hello world\n"

// TestPrivilegedPort80: the master binds port 80 on the server host and
// its workers answer a client on another host.
func TestPrivilegedPort80(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, netnstest.Config{Subnet: 1, Clients: 1})
	addr := netip.AddrPortFrom(n.Server.IPv4(), 80).String()
	m := startMaster(t, n.Server, 2, "tcp", addr)
	if got := m.b.Addrs(); len(got) != 1 || got[0].String() != addr {
		t.Fatalf("master listening on %v, want [%s]", got, addr)
	}
	client := n.Clients[0].HTTPClient(requestTimeout)
	defer client.CloseIdleConnections()
	byWorker := map[int]int{}
	for i := 0; i < 4; i++ {
		a, err := get(client, "http://"+addr+"/", "")
		if err != nil {
			t.Fatalf("request %d from %s: %v", i, n.Clients[0].Name, err)
		}
		if a.body != hello {
			t.Fatalf("request %d: body %q, want %q", i, a.body, hello)
		}
		byWorker[a.worker]++
	}
	checkEven(t, byWorker, 2, 4)
	a, err := get(client, "http://"+addr+"/local", "")
	if err != nil || a.body != addr {
		t.Errorf("/local: %q, %v; want the server's %s", a.body, err, addr)
	}
}

func TestClientAddressIPv4(t *testing.T) {
	t.Parallel()
	testClientAddress(t, 2, false)
}

func TestClientAddressIPv6(t *testing.T) {
	t.Parallel()
	testClientAddress(t, 3, true)
}

// testClientAddress: clients on three hosts with distinct addresses; each
// handler sees in RemoteAddr the exact address and port the client dialed
// from, carried through the fd handoff.
func testClientAddress(t *testing.T, subnet int, ipv6 bool) {
	n := netnstest.New(t, netnstest.Config{Subnet: subnet, Clients: 3})
	ip := n.Server.IPv4()
	if ipv6 {
		ip = n.Server.IPv6()
	}
	addr := netip.AddrPortFrom(ip, 80).String()
	startMaster(t, n.Server, 3, "tcp", addr)
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	byWorker := map[int]int{}
	for _, c := range n.Clients {
		want := c.IPv4()
		if ipv6 {
			want = c.IPv6()
		}
		for i := 0; i < 3; i++ {
			conn, err := c.DialContext(ctx, "tcp", addr)
			if err != nil {
				t.Fatalf("%s dialing %s: %v", c.Name, addr, err)
			}
			local := conn.LocalAddr().String()
			a, err := getOn(conn, "/remote", "")
			if err != nil {
				t.Fatalf("%s: %v", c.Name, err)
			}
			got, perr := netip.ParseAddrPort(a.body)
			if a.body != local || perr != nil || got.Addr() != want {
				t.Errorf("%s: worker %d saw RemoteAddr %q, want %s (the client's own address)", c.Name, a.worker, a.body, local)
			} else {
				t.Logf("%s (%s): worker %d saw RemoteAddr %s", c.Name, want, a.worker, a.body)
			}
			byWorker[a.worker]++
		}
	}
	checkEven(t, byWorker, 3, 9)
}

// source is one client address: a host and one of its addresses.
type source struct {
	host *netnstest.Host
	addr netip.Addr
}

// TestRoundRobinExactVersusReusePort: new connections from many source
// addresses on three hosts are spread exactly evenly by the master over 3
// workers; the same clients, in the same run and namespace, spread over 3
// SO_REUSEPORT listeners as the kernel's hash decides. The reuseport split
// is logged, not asserted, beyond being no more even than the master's.
func TestRoundRobinExactVersusReusePort(t *testing.T) {
	t.Parallel()
	const (
		workers      = 3
		extraPerHost = 10
		conns        = 300
	)
	n := netnstest.New(t, netnstest.Config{Subnet: 4, Clients: 3})
	var sources []source
	for _, c := range n.Clients {
		extra, err := c.AddIPv4(extraPerHost)
		if err != nil {
			t.Fatal(err)
		}
		sources = append(sources, source{c, c.IPv4()})
		for _, a := range extra {
			sources = append(sources, source{c, a})
		}
	}
	handoffAddr := netip.AddrPortFrom(n.Server.IPv4(), 80).String()
	reuseAddr := netip.AddrPortFrom(n.Server.IPv4(), 8080).String()
	startMaster(t, n.Server, workers, "tcp", handoffAddr)
	startReusePort(t, n.Server, workers, reuseAddr)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	request := func(s source, addr, header string) (answer, error) {
		conn, err := s.host.DialFrom(ctx, s.addr, "tcp", addr)
		if err != nil {
			return answer{}, err
		}
		return getOn(conn, "/", header)
	}
	handoff, reuse := map[int]int{}, map[string]int{}
	for i := 0; i < conns; i++ {
		s := sources[i%len(sources)]
		a, err := request(s, handoffAddr, "")
		if err != nil {
			t.Fatalf("connection %d from %s to the master: %v", i, s.addr, err)
		}
		handoff[a.worker]++
		a, err = request(s, reuseAddr, "X-Listener")
		if err != nil {
			t.Fatalf("connection %d from %s to the reuseport listeners: %v", i, s.addr, err)
		}
		reuse[a.header]++
	}
	hs, rs := spread(handoff, workers), spread(reuse, workers)
	t.Logf("%d new connections from %d source addresses on %d hosts:", conns, len(sources), len(n.Clients))
	t.Logf("  handoff round-robin over %d workers: %s, max-min %d", workers, split(handoff), hs)
	t.Logf("  SO_REUSEPORT over %d listeners:       %s, max-min %d", workers, split(reuse), rs)
	checkEven(t, handoff, workers, conns)
	if hs > rs {
		t.Errorf("handoff's split (max-min %d) is less even than SO_REUSEPORT's (max-min %d)", hs, rs)
	}
}

// startReusePort serves n SO_REUSEPORT listeners on address in the host,
// each answering with X-Listener set to its index, until t's cleanup.
func startReusePort(t *testing.T, host *netnstest.Host, n int, address string) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = os.NewSyscallError("setsockopt SO_REUSEPORT", unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1))
		}); err != nil {
			return err
		}
		return serr
	}}
	var g errgroup.Group
	var servers []*http.Server
	t.Cleanup(func() {
		for _, s := range servers {
			_ = s.Close()
		}
		if err := g.Wait(); err != nil {
			t.Errorf("reuseport server: %v", err)
		}
	})
	for i := 0; i < n; i++ {
		ln, err := host.Listen(context.Background(), lc, "tcp", address)
		if err != nil {
			t.Fatalf("reuseport listener %d on %s: %v", i, address, err)
		}
		id := strconv.Itoa(i)
		s := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("X-Listener", id)
			_, _ = w.Write([]byte(hello))
		})}
		servers = append(servers, s)
		g.Go(func() error {
			if err := s.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
}

// checkEven checks that conns new connections went round-robin, exactly
// conns/workers to each of the workers (by X-Worker-Id).
func checkEven(t *testing.T, byWorker map[int]int, workers, conns int) {
	t.Helper()
	even := len(byWorker) == workers
	for id, k := range byWorker {
		even = even && id != 0 && k == conns/workers
	}
	if !even {
		t.Errorf("%d new connections went to workers %s; want exactly %d to each of %d workers", conns, split(byWorker), conns/workers, workers)
	}
}

// split formats counts by key, in key order.
func split[K int | string](counts map[K]int) string {
	var s string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		s += fmt.Sprintf("%v:%d ", k, counts[k])
	}
	return s
}

// TestUnixSocketInNamespace: a Unix-socket listener opened by the master
// on the server host, served by workers, reached from a client host.
func TestUnixSocketInNamespace(t *testing.T) {
	t.Parallel()
	n := netnstest.New(t, netnstest.Config{Subnet: 5, Clients: 1})
	path := filepath.Join(t.TempDir(), "handoff.sock")
	startMaster(t, n.Server, 2, "unix", path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want a socket with mode 0600", path, fi.Mode())
	}
	c := n.Clients[0]
	client := &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return c.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}
	defer client.CloseIdleConnections()
	byWorker := map[int]int{}
	for i := 0; i < 4; i++ {
		a, err := get(client, "http://handoff.test/", "")
		if err != nil {
			t.Fatalf("request %d over %s: %v", i, path, err)
		}
		if a.body != hello {
			t.Fatalf("request %d: body %q, want %q", i, a.body, hello)
		}
		byWorker[a.worker]++
	}
	checkEven(t, byWorker, 2, 4)
}

// TestWorkerKilledUnderLoad: clients on two hosts keep making requests,
// each on a new connection, while one of three workers is SIGKILLed. The
// worker is replaced, the others keep serving, and no more requests fail
// than could have been in progress on the killed worker: each client has
// at most one request in progress, so at most `concurrency`.
func TestWorkerKilledUnderLoad(t *testing.T) {
	t.Parallel()
	const (
		workers     = 3
		concurrency = 8
		loadFor     = 3 * time.Second
		killAfter   = time.Second
		maxRequests = 50000
		maxErrors   = 10 // errors kept for the log
	)
	n := netnstest.New(t, netnstest.Config{Subnet: 6, Clients: 2})
	addr := netip.AddrPortFrom(n.Server.IPv4(), 80).String()
	m := startMaster(t, n.Server, workers, "tcp", addr)
	initial := m.b.Workers()
	victim := initial[1]
	maxInitialID := 0
	for _, w := range initial {
		maxInitialID = max(maxInitialID, w.ID())
	}
	url := "http://" + addr + "/?delay=2ms" // so that requests are in progress when the kill comes

	var (
		sent, failed, okAfterKill atomic.Int64
		killedAt                  atomic.Int64 // unix nanoseconds, 0 before the kill
		mu                        sync.Mutex
		byWorker                  = map[int]int{}
		errs                      []string
		slowest                   time.Duration
	)
	clients := make([]*http.Client, len(n.Clients))
	for i, c := range n.Clients {
		clients[i] = c.HTTPClient(requestTimeout)
		defer clients[i].CloseIdleConnections()
	}
	start := time.Now()
	stop := start.Add(loadFor)
	var g errgroup.Group
	for i := 0; i < concurrency; i++ {
		client := clients[i%len(clients)]
		g.Go(func() error {
			for time.Now().Before(stop) && sent.Add(1) <= maxRequests {
				t0 := time.Now()
				a, err := get(client, url, "")
				took := time.Since(t0)
				mu.Lock()
				slowest = max(slowest, took)
				mu.Unlock()
				if err == nil && a.body != hello {
					err = fmt.Errorf("body %q", a.body)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < maxErrors {
						errs = append(errs, fmt.Sprintf("%v after start: %v", time.Since(start).Round(time.Millisecond), err))
					}
					mu.Unlock()
					continue
				}
				if killedAt.Load() != 0 {
					okAfterKill.Add(1)
				}
				mu.Lock()
				byWorker[a.worker]++
				mu.Unlock()
			}
			return nil
		})
	}
	time.Sleep(killAfter)
	killErr := victim.Kill(syscall.SIGKILL)
	killedAt.Store(time.Now().UnixNano())
	_ = g.Wait()
	elapsed := time.Since(start)
	if killErr != nil {
		t.Fatalf("killing worker %d (pid %d): %v", victim.ID(), victim.PID(), killErr)
	}
	total := min(sent.Load(), maxRequests)
	t.Logf("%d clients on %d hosts for %v, a new connection per request: %d requests sent, %d failed; worker %d (pid %d) SIGKILLed after %v",
		concurrency, len(n.Clients), elapsed.Round(time.Millisecond), total, failed.Load(), victim.ID(), victim.PID(), killAfter)
	t.Logf("answers by worker: %s; slowest request %v", split(byWorker), slowest.Round(time.Millisecond))
	for _, e := range errs {
		t.Logf("  failed: %s", e)
	}

	ev := m.exitOf(t, victim)
	if ev.Signal != syscall.SIGKILL || ev.ExitedAfterDisconnect {
		t.Errorf("worker %d exit: signal %v, after disconnect %v; want SIGKILL, false", victim.ID(), ev.Signal, ev.ExitedAfterDisconnect)
	}
	if f := failed.Load(); f > concurrency {
		t.Errorf("%d requests failed, more than the %d that could have been in progress on the killed worker", f, concurrency)
	}
	if okAfterKill.Load() == 0 {
		t.Errorf("no request succeeded after the kill")
	}
	if byWorker[victim.ID()] == 0 {
		t.Errorf("the killed worker %d served nothing before the kill: %v", victim.ID(), byWorker)
	}
	// The worker is replaced, and the replacement serves: three new
	// connections go round-robin over the three workers.
	repl := m.waitListening(t, 1, maxInitialID)[0]
	t.Logf("worker %d replaced by worker %d (pid %d); it served %d requests during the load", victim.ID(), repl.ID(), repl.PID(), byWorker[repl.ID()])
	if got := len(m.b.Workers()); got != workers {
		t.Errorf("%d workers after the replacement, want %d", got, workers)
	}
	served := map[int]int{}
	stalls := m.b.Stats().Stalls
	for i := 0; i < workers; i++ {
		a, err := get(clients[0], url, "")
		if err != nil {
			t.Fatalf("request %d after the replacement: %v", i, err)
		}
		served[a.worker]++
	}
	switch {
	case served[repl.ID()] == 1:
	case m.b.Stats().Stalls > stalls || anyStalled(m.b):
		// A worker starved of CPU was routed around, as it must be:
		// round-robin is exact only over routable workers.
		t.Logf("a worker stalled meanwhile: %d requests went to workers %v", workers, served)
	default:
		t.Errorf("%d requests after the replacement went to workers %v, want one to the replacement %d", workers, served, repl.ID())
	}
}

// anyStalled reports whether a worker of b is routed around for stalling.
func anyStalled(b *balancer.Balancer) bool {
	for _, w := range b.Workers() {
		if w.Stats().Stalled {
			return true
		}
	}
	return false
}
