//go:build linux

package worker

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"
)

// serving runs sc.Serve(ctx, srv, ln) on a goroutine; Cleanup stops it
// and waits. The channel yields Serve's result.
func serving(t *testing.T, sc *ServeConfig, srv *http.Server, ln net.Listener) (context.CancelFunc, <-chan error) {
	t.Helper()
	sc.NoSignals = true // the test binary's signals are not ours to take
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		done <- sc.Serve(ctx, srv, ln)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-returned:
		case <-time.After(waitTimeout):
			t.Error("Serve did not return after its context was cancelled")
		}
	})
	return cancel, done
}

// waitFor waits until ok, up to waitTimeout.
func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// connectThenDrain connects a client to ln, waits until the server has
// accepted the connection (states counts one new), then cancels Serve's
// context and gives the drain a moment to begin. Cleanup closes the
// client, which it returns.
func connectThenDrain(t *testing.T, ln net.Listener, states func(http.ConnState) int, cancel context.CancelFunc) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	waitFor(t, "the connection to be accepted", func() bool { return states(http.StateNew) == 1 })
	cancel()
	time.Sleep(20 * time.Millisecond)
	return c
}

// countStates wraps srv's ConnState in a counter of connections in each
// state, read through the returned function.
func countStates(srv *http.Server) func(http.ConnState) int {
	var mu chanMutex = make(chan struct{}, 1)
	counts := map[http.ConnState]int{}
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		mu.lock()
		counts[s]++
		mu.unlock()
	}
	return func(s http.ConnState) int {
		mu.lock()
		defer mu.unlock()
		return counts[s]
	}
}

type chanMutex chan struct{}

func (m chanMutex) lock()   { m <- struct{}{} }
func (m chanMutex) unlock() { <-m }

func hello(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "hello\n") }

// The race that http.Server.Shutdown loses: a client connects, the drain
// begins, and only then does the request arrive. Shutdown would close the
// connection unanswered; Serve answers it.
func TestServeAnswersARequestSentAfterTheDrainBegan(t *testing.T) {
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	states := countStates(srv)
	cancel, done := serving(t, &ServeConfig{}, srv, ln)

	c := connectThenDrain(t, ln, states, cancel) // the drain is under way, waiting for this request
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) with a connection waiting for its request", err)
	default:
	}
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the request sent after the drain began got no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(body) != "hello\n" || !resp.Close {
		t.Fatalf("got %d %q (close %v), want 200 hello with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// A request in flight when the drain begins completes, and Serve returns
// only after it.
func TestServeCompletesRequestsInFlight(t *testing.T) {
	ln := tcpListener(t)
	started, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-release
		hello(w, r)
	})}
	cancel, done := serving(t, &ServeConfig{}, srv, ln)
	got := make(chan string, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String())
		if err != nil {
			got <- err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) with a request in flight", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if s := <-got; s != "hello\n" {
		t.Fatalf("the request in flight got %q", s)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// The listener is closed: new connections are refused.
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the listener still accepts after the drain")
	}
}

// When the listener closes (under a master, its Disconnect), Serve
// drains and returns nil.
func TestServeDrainsWhenTheListenerCloses(t *testing.T) {
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	_, done := serving(t, &ServeConfig{}, srv, ln)
	_ = ln.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("Serve did not return after its listener closed")
	}
}

// hijacker serves a hijacked connection that echoes lines until told to
// go, when it writes "bye\n" and closes, as a WebSocket server sends 1001.
type hijacker struct {
	conns chan net.Conn
}

func (h *hijacker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		return
	}
	_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	_ = rw.Flush()
	h.conns <- c
}

func dialHijacked(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return c, r
}

// Hijacked connections are told to go through OnDrain and waited for.
func TestServeTellsHijackedConnectionsToGoAndWaitsForThem(t *testing.T) {
	ln := tcpListener(t)
	h := &hijacker{conns: make(chan net.Conn, 2)}
	srv := &http.Server{Handler: h}
	var server []net.Conn
	sc := &ServeConfig{OnDrain: func() {
		for _, c := range server {
			_, _ = io.WriteString(c, "bye\n")
			_ = c.Close()
		}
	}}
	cancel, done := serving(t, sc, srv, ln)
	clients := make([]*bufio.Reader, 2)
	for i := range clients {
		_, clients[i] = dialHijacked(t, ln.Addr().String())
		server = append(server, <-h.conns)
	}
	cancel()
	for i, r := range clients {
		line, err := r.ReadString('\n')
		if line != "bye\n" {
			t.Fatalf("hijacked client %d read %q, %v; want bye from OnDrain", i, line, err)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// A hijacked connection that nobody closes holds the drain until its
// timeout; then Serve closes it and says so.
func TestServeClosesHijackedConnectionsAtTheDrainTimeout(t *testing.T) {
	ln := tcpListener(t)
	h := &hijacker{conns: make(chan net.Conn, 1)}
	srv := &http.Server{Handler: h}
	sc := &ServeConfig{DrainTimeout: 200 * time.Millisecond}
	cancel, done := serving(t, sc, srv, ln)
	c, r := dialHijacked(t, ln.Addr().String())
	<-h.conns
	cancel()
	start := time.Now()
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	if _, err := r.ReadByte(); !errors.Is(err, io.EOF) {
		t.Fatalf("the hijacked client read %v, want EOF once the drain timed out", err)
	}
	if err := <-done; !errors.Is(err, ErrDrainTimeout) {
		t.Fatalf("Serve returned %v, want ErrDrainTimeout", err)
	}
	if d := time.Since(start); d < sc.DrainTimeout/2 {
		t.Fatalf("the hijacked connection was closed after %s, before the drain timeout %s", d, sc.DrainTimeout)
	}
}

// MaxConnAge ends an HTTP/1 keep-alive connection after its age, with
// Connection: close on its next response.
func TestServeMaxConnAgeHTTP1(t *testing.T) {
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	serving(t, &ServeConfig{MaxConnAge: 100 * time.Millisecond}, srv, ln)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	get := func() (reused, closed bool) {
		t.Helper()
		var r bool
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { r = i.Reused }})
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String(), nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return r, resp.Close
	}
	if _, closed := get(); closed {
		t.Fatal("a new connection was closed")
	}
	if reused, closed := get(); !reused || closed {
		t.Fatalf("a young connection: reused %v, closed %v; want kept", reused, closed)
	}
	time.Sleep(150 * time.Millisecond)
	if reused, closed := get(); !reused || !closed {
		t.Fatalf("an old connection: reused %v, closed %v; want its last response to close it", reused, closed)
	}
	if reused, _ := get(); reused {
		t.Fatal("the connection past its age was used again")
	}
}

// MaxConnAge ends an HTTP/2 connection with GOAWAY: the client's next
// request goes on a new connection, and none fails.
func TestServeMaxConnAgeHTTP2(t *testing.T) {
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello), Protocols: new(http.Protocols)}
	srv.Protocols.SetUnencryptedHTTP2(true)
	states := countStates(srv)
	serving(t, &ServeConfig{MaxConnAge: 100 * time.Millisecond}, srv, ln)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	get := func() {
		t.Helper()
		resp, err := client.Get("http://" + ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("got HTTP/%d, want 2", resp.ProtoMajor)
		}
	}
	get()
	get()
	if n := states(http.StateNew); n != 1 {
		t.Fatalf("%d connections for two young requests, want 1", n)
	}
	time.Sleep(150 * time.Millisecond)
	get() // past the age: answered, then GOAWAY
	waitFor(t, "the old connection to close", func() bool { return states(http.StateClosed) == 1 })
	get()
	if n := states(http.StateNew); n != 2 {
		t.Fatalf("%d connections after the age, want 2", n)
	}
}

// HTTP/2 connections get GOAWAY at the drain and their streams finish.
func TestServeDrainsHTTP2(t *testing.T) {
	ln := tcpListener(t)
	started, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Protocols: new(http.Protocols), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		hello(w, r)
	})}
	srv.Protocols.SetUnencryptedHTTP2(true)
	cancel, done := serving(t, &ServeConfig{}, srv, ln)
	tr := &http.Transport{Protocols: new(http.Protocols)}
	tr.Protocols.SetUnencryptedHTTP2(true)
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	got := make(chan error, 1)
	go func() {
		resp, err := client.Get("http://" + ln.Addr().String() + "/slow")
		if err == nil {
			_, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		got <- err
	}()
	<-started
	cancel()
	time.Sleep(20 * time.Millisecond)
	close(release)
	if err := <-got; err != nil {
		t.Fatalf("the HTTP/2 stream in flight failed: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// Under a master, Serve reports on the counter page that it serves, and
// which connections have a request in flight.
func TestServeReportsBusyAndIdleConnections(t *testing.T) {
	fm := startMaster(t)
	fm.install(t)
	l := fm.listen(t, "tcp", "127.0.0.1:0")
	clientLn := tcpListener(t) // where the clients connect, to make conns to hand off
	started, release := make(chan struct{}), make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-release
		hello(w, r)
	})}
	serving(t, &ServeConfig{}, srv, l)
	waitFor(t, "Serving on the page", func() bool { return fm.ctr.Serving.Load() == 1 })

	clients, fds := connectN(t, clientLn, 2)
	if err := fm.handoff(l.id, fds); err != nil {
		t.Fatal(err)
	}
	if fm.ctr.Busy.Load() != 0 {
		t.Fatal("busy before any request")
	}
	reader := make(chan string, 2)
	for _, c := range clients {
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		go func() {
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				reader <- err.Error()
				return
			}
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 6))
			reader <- string(b)
		}()
	}
	<-started
	<-started
	if n, idle := fm.ctr.Busy.Load(), fm.ctr.Idle.Load(); n != 2 || idle != 0 {
		t.Fatalf("Busy %d, Idle %d with two requests in flight, want 2 and 0", n, idle)
	}
	close(release)
	for range clients {
		if s := <-reader; s != "hello\n" {
			t.Fatalf("got %q", s)
		}
	}
	waitFor(t, "Busy back to 0", func() bool { return fm.ctr.Busy.Load() == 0 })
	// Answered, the keep-alive connections wait for their next request:
	// idle, until their clients close them.
	waitFor(t, "both connections idle", func() bool { return fm.ctr.Idle.Load() == 2 })
	for _, c := range clients {
		_ = c.Close()
	}
	waitFor(t, "Idle back to 0 once the clients closed", func() bool { return fm.ctr.Idle.Load() == 0 })
}

// A TLS listener serves HTTP/2 over ALPN through Serve.
func TestServeTLSListener(t *testing.T) {
	if testing.Short() {
		t.Skip("makes a certificate")
	}
	cert := selfSigned(t)
	ln := tls.NewListener(tcpListener(t), &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	cancel, done := serving(t, &ServeConfig{}, srv, ln)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Get("https://" + ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.ProtoMajor != 2 || !strings.HasPrefix(string(b), "hello") {
		t.Fatalf("got HTTP/%d %q, want HTTP/2 hello", resp.ProtoMajor, b)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// selfSigned makes a certificate for 127.0.0.1.
func selfSigned(t *testing.T) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// A connection hijacked after the drain began learns it from Draining,
// which OnDrain, called once at the start, could not tell it.
func TestServeDrainingReachesConnectionsHijackedLate(t *testing.T) {
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, rw, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
		_ = rw.Flush()
		select {
		case <-Draining(r.Context()):
			_, _ = io.WriteString(c, "bye\n")
		case <-time.After(waitTimeout):
		}
	})}
	states := countStates(srv)
	cancel, done := serving(t, &ServeConfig{}, srv, ln)
	c := connectThenDrain(t, ln, states, cancel) // the drain began; now the upgrade
	_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n")
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade during the drain: %v %v", resp, err)
	}
	_ = c.SetReadDeadline(time.Now().Add(waitTimeout))
	if line, err := r.ReadString('\n'); line != "bye\n" {
		t.Fatalf("the late hijacked connection read %q, %v; want bye, as Draining was closed", line, err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if Draining(context.Background()) != nil {
		t.Error("Draining of a context Serve did not make is not nil")
	}
}

// Bad ServeConfig values are errors, not defaults.
func TestServeConfigErrors(t *testing.T) {
	ln := tcpListener(t)
	for _, sc := range []ServeConfig{{DrainTimeout: -1}, {MaxConnAge: -time.Second}} {
		if err := sc.Serve(context.Background(), &http.Server{}, ln); err == nil {
			t.Errorf("%+v: no error", sc)
		}
	}
	if err := Serve(context.Background(), &http.Server{}); err == nil {
		t.Error("no listener: no error")
	}
}

// keepAliveGet sends a GET on c and reads its response, and reports
// whether the response said Connection: close.
func keepAliveGet(t *testing.T, c net.Conn, r *bufio.Reader) (closed bool, err error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return false, err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return false, err
	}
	body, err := io.ReadAll(resp.Body)
	if err == nil && (resp.StatusCode != 200 || string(body) != "hello\n") {
		err = fmt.Errorf("got %d %q, want 200 hello", resp.StatusCode, body)
	}
	return resp.Close, err
}

// idleThenDrain opens a keep-alive connection to a Serve with sc, makes
// one request on it, waits until it is idle, and begins the drain. It
// returns the connection, its reader, when the drain began, and Serve's
// result.
func idleThenDrain(t *testing.T, sc *ServeConfig) (net.Conn, *bufio.Reader, time.Time, <-chan error) {
	t.Helper()
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	states := countStates(srv)
	cancel, done := serving(t, sc, srv, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	r := bufio.NewReader(c)
	if closed, err := keepAliveGet(t, c, r); err != nil || closed {
		t.Fatalf("before the drain: closed %v, %v; want a kept connection", closed, err)
	}
	waitFor(t, "the connection to be idle", func() bool { return states(http.StateIdle) == 1 })
	start := time.Now()
	cancel()
	return c, r, start, done
}

// A keep-alive client idle when the drain begins that sends again within
// IdleGrace is answered, with Connection: close, and then the connection
// closes; Serve returns once it has.
func TestServeAnswersAnIdleKeepAliveClientWithinTheGrace(t *testing.T) {
	t.Parallel()
	c, r, _, done := idleThenDrain(t, &ServeConfig{IdleGrace: time.Minute})
	time.Sleep(50 * time.Millisecond) // the drain is under way
	select {
	case err := <-done:
		t.Fatalf("Serve returned (%v) within the grace of an idle connection", err)
	default:
	}
	closed, err := keepAliveGet(t, c, r)
	if err != nil || !closed {
		t.Fatalf("the idle client's request after the drain began: closed %v, %v; want answered with Connection: close", closed, err)
	}
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after the closing response: read %d, %v; want EOF", n, err)
	}
	if err := recv(t, done, "Serve to return once the connection closed"); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// The control: with no grace (as http.Server.Shutdown does), the idle
// connection is closed at once and its next request is lost.
func TestServeWithoutGraceClosesIdleAtOnce(t *testing.T) {
	t.Parallel()
	_, r, _, done := idleThenDrain(t, &ServeConfig{IdleGrace: -1})
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the idle connection: read %d, %v; want EOF at once", n, err)
	}
	if err := recv(t, done, "Serve to return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// An idle connection that sends nothing is closed once the grace is over,
// not before.
func TestServeClosesAnIdleConnectionAfterTheGrace(t *testing.T) {
	t.Parallel()
	const grace = 300 * time.Millisecond
	_, r, start, done := idleThenDrain(t, &ServeConfig{IdleGrace: grace})
	if n, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the idle connection: read %d, %v; want EOF after the grace", n, err)
	}
	if d := time.Since(start); d < grace {
		t.Errorf("the idle connection closed %v after the drain began, within its grace of %v", d, grace)
	}
	if err := recv(t, done, "Serve to return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

// A busy keep-alive client gets Connection: close on its next response
// and the drain ends when it has closed, with no wait for the grace.
func TestServeBusyKeepAliveClientClosesFirst(t *testing.T) {
	t.Parallel()
	ln := tcpListener(t)
	srv := &http.Server{Handler: http.HandlerFunc(hello)}
	cancel, done := serving(t, &ServeConfig{IdleGrace: time.Hour, DrainTimeout: time.Hour}, srv, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	for i := 0; ; i++ {
		if i == 3 {
			cancel()
		}
		closed, err := keepAliveGet(t, c, r)
		if err != nil {
			t.Fatalf("request %d: %v", i+1, err)
		}
		if closed {
			break
		}
		if i > 1000 {
			t.Fatal("1000 requests after the drain began, none said Connection: close")
		}
	}
	if err := recv(t, done, "Serve to return, with no idle connection left"); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestRequestWaiting(t *testing.T) {
	t.Parallel()
	ln := tcpListener(t)
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	if requestWaiting(server) {
		t.Error("requestWaiting before anything was sent")
	}
	if _, err := io.WriteString(client, "GET"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the bytes to arrive", func() bool { return requestWaiting(server) })
	if _, err := io.ReadFull(server, make([]byte, 3)); err != nil {
		t.Fatal(err)
	}
	if requestWaiting(server) {
		t.Error("requestWaiting once every byte was read")
	}
}
