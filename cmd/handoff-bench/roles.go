//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/worker"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// maxBurn bounds ?burn=, so no request can hold a worker for long.
const maxBurn = 100 * time.Millisecond

// masterShutdownTimeout bounds a master role's drain of its workers.
const masterShutdownTimeout = 3 * time.Second

var helloWorld = []byte("hello world\n")

// benchHandler is the handler of every Go server: "hello world\n", after
// spinning the CPU for ?burn=DURATION. It counts the requests it serves.
func benchHandler(served *atomic.Uint64) http.Handler {
	textPlain := []string{"text/plain; charset=utf-8"}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		if r.URL.RawQuery != "" {
			if d := burnParam(r.URL.RawQuery); d > 0 {
				spin(d)
			}
		}
		w.Header()["Content-Type"] = textPlain
		_, _ = w.Write(helloWorld)
	})
}

// burnParam returns the burn= duration of a query, 0 if there is none or
// it is out of range.
func burnParam(rawQuery string) time.Duration {
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return 0
	}
	d, err := time.ParseDuration(q.Get("burn"))
	if err != nil || d <= 0 || d > maxBurn {
		return 0
	}
	return d
}

var spinSink uint64

// spin keeps the CPU busy for d, as a request that computes would.
func spin(d time.Duration) {
	end := time.Now().Add(d)
	x := uint64(1)
	for time.Now().Before(end) {
		for range 256 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	atomic.AddUint64(&spinSink, x)
}

// runRole runs this process as one of the servers' processes.
func runRole(c *config) int {
	var err error
	switch c.role {
	case "single", "reuseport", "worker":
		err = runServerRole(c)
	case "master":
		err = runMasterRole(c)
	default:
		err = fmt.Errorf("unknown role %q", c.role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "handoff-bench -role=%s (pid %d): %v\n", c.role, os.Getpid(), err)
		return 1
	}
	return 0
}

// runServerRole serves the bench handler until SIGTERM: on a plain
// listener (single), an SO_REUSEPORT listener of its own (reuseport), or
// a listener fed by the handoff master (worker).
func runServerRole(c *config) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))
	var ln net.Listener
	var err error
	switch c.role {
	case "single":
		ln, err = net.Listen("tcp", addr)
	case "reuseport":
		lc := net.ListenConfig{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return os.NewSyscallError("setsockopt", serr)
		}}
		ln, err = lc.Listen(ctx, "tcp", addr)
	case "worker":
		if !worker.IsWorker() {
			return errors.New("-role=worker runs only under a handoff master")
		}
		ln, err = worker.Listen("tcp", addr)
	}
	if err != nil {
		return err
	}
	var served atomic.Uint64
	srv := &http.Server{Handler: benchHandler(&served), ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, 1)
	if c.role == "worker" {
		// A handoff worker serves as the README tells users to, with
		// worker.Serve, which reports its requests in flight on its
		// counter page for the least-requests policy. This process
		// takes the signals itself, as the other roles do.
		sc := worker.ServeConfig{NoSignals: true}
		go func() { errs <- sc.Serve(ctx, srv, ln) }()
	} else {
		go func() { errs <- srv.Serve(ln) }()
	}
	// The stats socket appears only once the server listens: the bench
	// counts sockets to know the server is ready.
	closeStats, err := serveStats(c.statsDir, &served)
	if err != nil {
		_ = srv.Close()
		return err
	}
	defer closeStats()
	select {
	case <-ctx.Done():
	case err := <-errs:
		// net.ErrClosed: the master disconnected this worker; SIGTERM
		// follows, and there is nothing left to drain for a benchmark.
		if !errors.Is(err, net.ErrClosed) && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	_ = srv.Close()
	return nil
}

// serveStats serves "PID REQUESTS\n" on DIR/PID.sock.
func serveStats(dir string, served *atomic.Uint64) (func(), error) {
	if dir == "" {
		return func() {}, nil
	}
	path := filepath.Join(dir, strconv.Itoa(os.Getpid())+".sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	pid := os.Getpid()
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_, _ = fmt.Fprintf(w, "%d %d\n", pid, served.Load())
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	return func() { _ = srv.Close() }, nil
}

// runMasterRole runs a handoff master with -procs workers, each this
// binary in -role=worker, until SIGTERM. With -cpuprofile it profiles
// itself from SIGUSR1 to SIGUSR2.
func runMasterRole(c *config) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	opts := balancer.Options{
		Workers: c.roleProcs,
		Path:    exe,
		Args:    []string{"-role=worker", "-port=" + strconv.Itoa(c.port), "-stats-dir=" + c.statsDir},
		// Prefork workers run one thread of Go code each.
		Env:             []string{"GOMAXPROCS=1"},
		ShutdownTimeout: masterShutdownTimeout,
		Logger:          zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger(),
	}
	policy, err := balancer.PolicyByName(c.policy)
	if err != nil {
		return fmt.Errorf("-policy: %w", err)
	}
	opts.Policy = policy
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)

	b, err := balancer.New(opts)
	if err != nil {
		return err
	}
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*masterShutdownTimeout)
		defer cancel()
		_ = b.Shutdown(ctx)
	}
	if _, err := b.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port))); err != nil {
		b.Kill()
		stop()
		return err
	}
	if err := b.Start(); err != nil {
		b.Kill()
		stop()
		return err
	}
	var prof *os.File
	stopProfile := func() {
		if prof != nil {
			pprof.StopCPUProfile()
			_ = prof.Close()
			prof = nil
		}
	}
	defer stopProfile()
	for sig := range sigs {
		switch sig {
		case syscall.SIGUSR1:
			if c.profile == "" || prof != nil {
				continue
			}
			f, err := os.Create(c.profile)
			if err != nil {
				fmt.Fprintf(os.Stderr, "handoff-bench master: %v\n", err)
				continue
			}
			if err := pprof.StartCPUProfile(f); err != nil {
				_ = f.Close()
				fmt.Fprintf(os.Stderr, "handoff-bench master: %v\n", err)
				continue
			}
			prof = f
		case syscall.SIGUSR2:
			stopProfile()
		default:
			stopProfile()
			stop()
			return nil
		}
	}
	return nil
}
