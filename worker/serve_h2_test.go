//go:build linux

package worker

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// An idle h2c connection (Go's own unencrypted HTTP/2, whose states
// ConnState reports on the raw conn, like HTTP/1's) is not closed by the
// drain's idle sweep: Shutdown ends it with GOAWAY, which tells the client
// to go elsewhere. A plain close would lose a request sent at that moment.
func TestServeIdleH2CGetsGoaway(t *testing.T) {
	t.Parallel()
	ln := tcpListener(t)
	srv := &http.Server{Protocols: new(http.Protocols), Handler: http.HandlerFunc(hello)}
	srv.Protocols.SetUnencryptedHTTP2(true)
	cancel, done := serving(t, &ServeConfig{IdleGrace: 20 * time.Millisecond}, srv, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(waitTimeout))
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
		_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndStream: true, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	// Read until the response ends: the connection is then idle.
	for answered := false; !answered; {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("before the drain: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = fr.WriteSettingsAck()
			}
		case *http2.DataFrame:
			answered = f.StreamEnded()
		}
	}
	cancel()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("the idle h2c connection ended without GOAWAY: %v", err)
		}
		if _, ok := f.(*http2.GoAwayFrame); ok {
			break
		}
	}
	if err := recv(t, done, "Serve to return"); err != nil {
		t.Errorf("Serve: %v", err)
	}
}
