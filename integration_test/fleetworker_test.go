//go:build linux

package integration_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/handoff-go/handoff/worker"
	"github.com/pires/go-proxyproto"
)

// The environment of a fleet worker: this test binary, run as the COMMAND
// of a handoff CLI on a fleet host (handoff ... -- TESTBINARY).
const (
	envFleetHost   = "HANDOFF_FLEET_HOST"   // the host's name, answered in X-Fleet-Host
	envFleetListen = "HANDOFF_FLEET_LISTEN" // the address the master listens on
	envFleetTrust  = "HANDOFF_FLEET_TRUST"  // the only range that may send a PROXY header: HAProxy's
)

// fleetProxyHeaderTimeout bounds how long a new connection may take to
// send its PROXY header.
const fleetProxyHeaderTimeout = 5 * time.Second

// fleetWorkerMain runs the fleet worker if this process is one, and never
// returns then.
func fleetWorkerMain() {
	if !worker.IsWorker() || os.Getenv(envFleetHost) == "" {
		return
	}
	os.Exit(serveFleetWorker(os.Getenv(envFleetHost), os.Getenv(envFleetListen), os.Getenv(envFleetTrust)))
}

// fleetHandler answers the client address it sees (r.RemoteAddr, from the
// PROXY header) with the headers X-Fleet-Host, X-Worker-Id and X-Pid;
// ?delay=DURATION waits first.
func fleetHandler(host string) http.Handler {
	id, pid := strconv.Itoa(worker.ID()), strconv.Itoa(os.Getpid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Fleet-Host", host)
		w.Header().Set("X-Worker-Id", id)
		w.Header().Set("X-Pid", pid)
		if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil && d > 0 && d < time.Second {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		_, _ = w.Write([]byte(r.RemoteAddr))
	})
}

// serveFleetWorker serves fleetHandler on the master's socket, wrapped
// with go-proxyproto: HAProxy (trust) must send a PROXY header, any other
// peer must not. It drains on SIGTERM without failing a request.
func serveFleetWorker(host, address, trust string) int {
	policy, err := proxyproto.PolicyFromRanges([]string{trust}, proxyproto.REQUIRE, proxyproto.REJECT)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet worker:", err)
		return 2
	}
	ln, err := worker.Listen("tcp", address)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet worker:", err)
		return 1
	}
	pl := &proxyproto.Listener{Listener: ln, ConnPolicy: policy, ReadHeaderTimeout: fleetProxyHeaderTimeout}
	srv := &http.Server{Handler: fleetHandler(host), ReadHeaderTimeout: 10 * time.Second}
	sc := worker.ServeConfig{DrainTimeout: time.Minute}
	if err := sc.Serve(context.Background(), srv, pl); err != nil {
		fmt.Fprintln(os.Stderr, "fleet worker:", err)
		return 1
	}
	return 0
}
