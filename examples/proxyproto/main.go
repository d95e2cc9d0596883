package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/worker"
	"github.com/pires/go-proxyproto"
)

// The workers' environment, set by the master.
const (
	envListen = "PROXYPROTO_EXAMPLE_LISTEN" // the address to serve
	envTrust  = "PROXYPROTO_EXAMPLE_TRUST"  // comma-separated trusted ranges
)

// proxyHeaderTimeout bounds how long a new connection may take to send
// its PROXY header.
const proxyHeaderTimeout = 5 * time.Second

// proxyListener wraps a worker's listener: a connection from a trusted
// peer may start with a PROXY header (v1 or v2), whose source address
// becomes the conn's RemoteAddr; from any other peer, a header is
// refused. Closing a wrapped conn closes the worker's conn, so the master
// still sees every close and balances load as usual.
func proxyListener(ln net.Listener, trusted []string) (net.Listener, error) {
	policy, err := proxyproto.PolicyFromRanges(trusted, proxyproto.USE, proxyproto.REJECT)
	if err != nil {
		return nil, err
	}
	return &proxyproto.Listener{Listener: ln, ConnPolicy: policy, ReadHeaderTimeout: proxyHeaderTimeout}, nil
}

// remoteAddrHandler answers the client address the handler sees.
func remoteAddrHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, r.RemoteAddr)
	})
}

// serveWorker serves remoteAddrHandler on the master's socket until
// SIGTERM.
func serveWorker(address string, trusted []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := worker.Listen("tcp", address)
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxyproto worker:", err)
		return 1
	}
	pl, err := proxyListener(ln, trusted)
	if err != nil {
		_ = ln.Close()
		fmt.Fprintln(os.Stderr, "proxyproto worker:", err)
		return 1
	}
	srv := &http.Server{Handler: remoteAddrHandler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(pl) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, net.ErrClosed) { // closed by the master's disconnect
			fmt.Fprintln(os.Stderr, "proxyproto worker:", err)
			return 1
		}
		<-ctx.Done() // SIGTERM follows
	}
	// Shutdown is the short way to drain. Under load it can drop a request
	// that arrives on a connection accepted just before it (net/http
	// closes it unanswered); cmd/handoff's demo worker shows a drain that
	// does not.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return 0
}

// startMaster listens on address, starts the workers and returns once
// they listen. args are the workers' arguments. The workers ask for the
// address as written here, so that with port 0 they share the port the
// master was given.
func startMaster(ctx context.Context, address string, trusted []string, workers int, args []string) (*balancer.Balancer, net.Addr, error) {
	b, err := balancer.New(balancer.Options{
		Workers: workers,
		Args:    args,
		Env:     []string{envListen + "=" + address, envTrust + "=" + strings.Join(trusted, ",")},
	})
	if err != nil {
		return nil, nil, err
	}
	addr, err := b.Listen("tcp", address)
	if err == nil {
		err = b.Start()
	}
	if err == nil {
		err = b.WaitReady(ctx)
	}
	if err != nil {
		b.Kill()
		_ = b.Shutdown(context.Background())
		return nil, nil, err
	}
	return b, addr, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve")
	trust := flag.String("trust", "127.0.0.0/8,::1/128", "comma-separated addresses or CIDR ranges of the load balancers allowed to send a PROXY header")
	workers := flag.Int("workers", 2, "number of worker processes")
	flag.Parse()
	if worker.IsWorker() {
		os.Exit(serveWorker(os.Getenv(envListen), strings.Split(os.Getenv(envTrust), ",")))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	b, addr, err := startMaster(ctx, *listen, strings.Split(*trust, ","), *workers, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "proxyproto:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "proxyproto: serving on %s; PROXY headers trusted from %s\n", addr, *trust)
	<-ctx.Done()
	if err := b.Shutdown(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, "proxyproto:", err)
		os.Exit(1)
	}
}
