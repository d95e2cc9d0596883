package testworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/worker"
)

// The environment of a test worker.
const (
	EnvMode     = "HANDOFF_TEST_MODE"
	EnvListen   = "HANDOFF_TEST_LISTEN" // comma-separated network!address
	EnvExitCode = "HANDOFF_TEST_EXIT_CODE"
	EnvEcho     = "HANDOFF_TEST_ENV" // the name of a variable to send back at start
	// EnvFailIfExists names a file: if it exists, the worker exits 1 at
	// once, as a bad deploy would.
	EnvFailIfExists = "HANDOFF_TEST_FAIL_IF_EXISTS"
)

// ListenResult is what mode "report" sends for each address.
type ListenResult struct {
	Kind      string `json:"kind"` // "listen"
	Network   string `json:"network"`
	Requested string `json:"requested"`
	Address   string `json:"address,omitempty"`
	Error     string `json:"error,omitempty"`
	InUse     bool   `json:"in_use,omitempty"` // errors.Is(err, syscall.EADDRINUSE)
}

// EnvValue is what a worker with EnvEcho set sends first.
type EnvValue struct {
	Kind  string `json:"kind"` // "env"
	Name  string `json:"name"`
	Value string `json:"value"`
	UID   int    `json:"uid"`
}

// Main runs the worker if this process is one, and never returns then.
func Main() {
	if !worker.IsWorker() {
		return
	}
	os.Exit(run())
}

// Handler answers "hello world\n" with the headers X-Worker-Id and X-Pid.
// Paths: /remote answers the client address the handler saw, /local the
// local address; ?delay=DURATION waits first.
func Handler() http.Handler {
	id, pid := strconv.Itoa(worker.ID()), strconv.Itoa(os.Getpid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Worker-Id", id)
		w.Header().Set("X-Pid", pid)
		if d, err := time.ParseDuration(r.URL.Query().Get("delay")); err == nil {
			select {
			case <-time.After(d):
			case <-r.Context().Done():
				return
			}
		}
		switch r.URL.Path {
		case "/remote":
			_, _ = w.Write([]byte(r.RemoteAddr))
		case "/local":
			la, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
			_, _ = fmt.Fprint(w, la)
		default:
			_, _ = w.Write([]byte("hello world\n"))
		}
	})
}

// Addrs parses EnvListen.
func Addrs() [][2]string {
	var out [][2]string
	for _, a := range strings.Split(os.Getenv(EnvListen), ",") {
		if network, address, ok := strings.Cut(a, "!"); ok {
			out = append(out, [2]string{network, address})
		}
	}
	return out
}

// FormatAddrs builds EnvListen's value.
func FormatAddrs(addrs ...[2]string) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = a[0] + "!" + a[1]
	}
	return strings.Join(parts, ",")
}

func run() int {
	if p := os.Getenv(EnvFailIfExists); p != "" {
		if _, err := os.Stat(p); err == nil {
			fmt.Fprintln(os.Stderr, "testworker: failing on purpose:", p, "exists")
			return 1
		}
	}
	if name := os.Getenv(EnvEcho); name != "" {
		_ = worker.Send(EnvValue{Kind: "env", Name: name, Value: os.Getenv(name), UID: os.Getuid()})
	}
	switch mode := os.Getenv(EnvMode); mode {
	case "exit":
		code, _ := strconv.Atoi(os.Getenv(EnvExitCode))
		return code
	case "busy":
		for _, a := range Addrs() {
			if _, err := worker.Listen(a[0], a[1]); err != nil {
				fmt.Fprintln(os.Stderr, "testworker:", err)
				return 1
			}
		}
		spin()
		return 0
	case "", "http", "report":
		return serve(mode == "report")
	default:
		fmt.Fprintf(os.Stderr, "testworker: unknown %s=%q\n", EnvMode, mode)
		return 2
	}
}

var sink uint64

// spin burns CPU forever without ever yielding on purpose.
func spin() {
	for i := uint64(0); ; i++ {
		sink += i * i
	}
}

func serve(report bool) int {
	go echo()
	srv := &http.Server{Handler: Handler()}
	var lns []net.Listener
	for _, a := range Addrs() {
		ln, err := worker.Listen(a[0], a[1])
		if report {
			r := ListenResult{Kind: "listen", Network: a[0], Requested: a[1]}
			if err != nil {
				r.Error, r.InUse = err.Error(), errors.Is(err, syscall.EADDRINUSE)
			} else {
				r.Address = ln.Addr().String()
			}
			_ = worker.Send(r)
		}
		if err != nil {
			if report {
				continue
			}
			fmt.Fprintln(os.Stderr, "testworker:", err)
			return 1
		}
		lns = append(lns, ln)
	}
	if len(lns) == 0 { // every Listen failed, as reported: wait to be stopped
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
		defer stop()
		<-ctx.Done()
		return 0
	}
	sc := worker.ServeConfig{DrainTimeout: time.Minute}
	if err := sc.Serve(context.Background(), srv, lns...); err != nil {
		fmt.Fprintln(os.Stderr, "testworker:", err)
		return 1
	}
	return 0
}

// echo sends every message from the master straight back.
func echo() {
	for m := range worker.Messages() {
		if err := worker.Send(json.RawMessage(m)); err != nil {
			fmt.Fprintln(os.Stderr, "testworker: echo:", err)
		}
	}
}
