//go:build linux

package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// echoSizes are the body sizes the HTTP cases ask for, in turn.
var echoSizes = []int{0, 1, 100, 4 << 10, 64 << 10}

// getEcho asks c for GET url/echo?size=N and checks the answer with
// check (nil: none) and the body. It returns the pid that answered.
func getEcho(c *http.Client, base string, size int, check func(*http.Response) error) (int, error) {
	resp, err := c.Get(base + "/echo?size=" + strconv.Itoa(size))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("size %d: reading the body: %w", size, err)
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("size %d: status %s: %q", size, resp.Status, body)
	}
	if !bytes.Equal(body, echoPattern(size)) {
		return 0, fmt.Errorf("size %d: body of %d bytes differs", size, len(body))
	}
	if check != nil {
		if err := check(resp); err != nil {
			return 0, err
		}
	}
	return strconv.Atoi(resp.Header.Get(headerPID))
}

// runHTTP2Case sends GET /echo from 4 goroutines over 2 clients (so 2
// connections, one per worker) across a rolling restart, and checks that
// every response was HTTP/2, and passes check.
func runHTTP2Case(t *testing.T, name string, m *master, base string, clients []*http.Client, check func(*http.Response) error) {
	var reqs tally
	r := acrossRestart(t, m, 200, 200, reqs.ok.Load, func(stop <-chan struct{}, g *errgroup.Group) {
		load(g, 4, 200000, stop, &reqs, func(w int, i int64) (int, error) {
			return getEcho(clients[w%len(clients)], base, echoSizes[i%int64(len(echoSizes))], func(resp *http.Response) error {
				if resp.ProtoMajor != 2 {
					return fmt.Errorf("answered in %s, want HTTP/2", resp.Proto)
				}
				if check != nil {
					return check(resp)
				}
				return nil
			})
		})
	})
	reqs.check(t, name+" requests", r)
	t.Logf("%s: requests %s; %v", name, reqs.figures(r), r)
}

// TestH2C: Go's own unencrypted HTTP/2 (http.Protocols with
// UnencryptedHTTP2 on both sides, prior knowledge), across a rolling
// restart: the old workers send GOAWAY and the clients move on.
func TestH2C(t *testing.T) {
	m := startMaster(t, "--http", "127.0.0.1:0")
	var clients []*http.Client
	for range 2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &p}
		t.Cleanup(tr.CloseIdleConnections)
		clients = append(clients, &http.Client{Transport: tr, Timeout: opTimeout})
	}
	runHTTP2Case(t, "h2c", m, "http://"+m.addr, clients, nil)
}

// TestTLSH2: tls.NewListener over the handed-off listener, h2 chosen by
// ALPN, a certificate the client verifies, across a rolling restart.
func TestTLSH2(t *testing.T) {
	certPEM, keyPEM, err := selfSignedPEM()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(certPEM) {
		t.Fatal("cannot parse the certificate")
	}
	m := startMaster(t, "--tls", "127.0.0.1:0", "--tls-cert", certFile, "--tls-key", keyFile)
	var clients []*http.Client
	for range 2 {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}, ForceAttemptHTTP2: true}
		t.Cleanup(tr.CloseIdleConnections)
		clients = append(clients, &http.Client{Transport: tr, Timeout: opTimeout})
	}
	runHTTP2Case(t, "tls h2", m, "https://"+m.addr, clients, func(resp *http.Response) error {
		if resp.TLS == nil || resp.TLS.NegotiatedProtocol != "h2" {
			return errors.New("ALPN did not choose h2")
		}
		return nil
	})
}

// halfClose sends one request on a new connection, half-closes it
// (CloseWrite: FIN) and reads the whole response, then EOF: a GET
// /echo?size=size, or with post a POST of size bytes to /echo.
func halfClose(addr string, size int, post bool) (int, error) {
	c, err := net.DialTimeout("tcp", addr, opTimeout)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(opTimeout))
	var req bytes.Buffer
	if post {
		fmt.Fprintf(&req, "POST /echo HTTP/1.1\r\nHost: compat\r\nContent-Length: %d\r\n\r\n", size)
		req.Write(echoPattern(size))
	} else {
		fmt.Fprintf(&req, "GET /echo?size=%d HTTP/1.1\r\nHost: compat\r\n\r\n", size)
	}
	if _, err := c.Write(req.Bytes()); err != nil {
		return 0, fmt.Errorf("writing the request: %w", err)
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, fmt.Errorf("CloseWrite: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return 0, fmt.Errorf("reading the response (post %v, size %d): %w", post, size, err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return 0, fmt.Errorf("post %v, size %d: reading the body (%d bytes): %w", post, size, len(body), err)
	}
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, echoPattern(size)) {
		return 0, fmt.Errorf("post %v, size %d: status %s, %d bytes of body, want 200 and the pattern", post, size, resp.Status, len(body))
	}
	// The server saw our FIN after the response: it closes too.
	if rest, err := io.ReadAll(br); err != nil || len(rest) > 0 {
		return 0, fmt.Errorf("after the response: %d more bytes, %v; want EOF", len(rest), err)
	}
	return strconv.Atoi(resp.Header.Get(headerPID))
}

// TestHalfClose: a client that half-closes after its request (GET, or
// POST with a body) and then reads the full response, one connection per
// request, across a rolling restart.
func TestHalfClose(t *testing.T) {
	m := startMaster(t, "--http", "127.0.0.1:0")
	var reqs tally
	r := acrossRestart(t, m, 100, 100, reqs.ok.Load, func(stop <-chan struct{}, g *errgroup.Group) {
		load(g, 2, 100000, stop, &reqs, func(w int, i int64) (int, error) {
			return halfClose(m.addr, echoSizes[i%int64(len(echoSizes))], i%2 == 0)
		})
	})
	reqs.check(t, "half-closed requests", r)
	t.Logf("half-close: requests %s; %v", reqs.figures(r), r)
}
