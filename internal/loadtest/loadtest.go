package loadtest

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"
)

// Body is what testworker.Handler answers, and so what every request of
// a Load must get.
const Body = "hello world\n"

// Get makes one GET request of url through c, and returns why it failed:
// it got no answer, or one other than status 200 with Body.
func Get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err == nil && (resp.StatusCode != http.StatusOK || string(body) != Body) {
		err = fmt.Errorf("status %d, body %q", resp.StatusCode, body)
	}
	return err
}

// Load is HTTP clients, each making one GET request at a time.
type Load struct {
	URL       string        // what every request gets
	NewConn   int           // clients that open a new connection for each request
	KeepAlive int           // clients that keep their connection alive
	PerClient int           // the most requests a client makes
	Timeout   time.Duration // each request's bound, from its start to its body's end
}

// Result counts a load's requests. It is safe for concurrent use.
type Result struct {
	mu     sync.Mutex // guards the fields below
	sent   int        // requests made
	failed int        // requests that failed, or got another answer than Body
	first  error      // the first failure
}

func (r *Result) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent++
	if err != nil {
		r.failed++
		if r.first == nil {
			r.first = err
		}
	}
}

// Counts returns how many requests were made and how many failed so far,
// and the first failure.
func (r *Result) Counts() (sent, failed int, first error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.sent, r.failed, r.first
}

// Start starts the clients. Each stops once stop is closed or after
// l.PerClient requests. A request fails as Get says. wait waits for every client to stop
// and closes their idle connections.
func (l Load) Start(stop <-chan struct{}) (r *Result, wait func()) {
	r = &Result{}
	var wg sync.WaitGroup
	var transports []*http.Transport
	client := func(tr *http.Transport) {
		defer wg.Done()
		c := &http.Client{Timeout: l.Timeout, Transport: tr}
		for i := 0; i < l.PerClient; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r.add(Get(c, l.URL))
		}
	}
	for i := 0; i < l.NewConn+l.KeepAlive; i++ {
		tr := &http.Transport{DisableKeepAlives: i < l.NewConn}
		transports = append(transports, tr)
		wg.Add(1)
		go client(tr)
	}
	return r, func() {
		wg.Wait()
		for _, tr := range transports {
			tr.CloseIdleConnections()
		}
	}
}
