//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"
)

// statusJSON is GET /status: the fleet at a glance, which `handoff status`
// prints.
type statusJSON struct {
	Version   string         `json:"version"`
	Workers   []workerJSON   `json:"workers"`
	Listeners []listenerJSON `json:"listeners"`
	Totals    totalsJSON     `json:"totals"`
}

// listenerJSON is one TCP listener's kernel queue.
type listenerJSON struct {
	Listener    string `json:"listener"`
	QueueLength int    `json:"queue_length"` // complete, not yet accepted
	Backlog     int    `json:"backlog"`
}

// totalsJSON is the master's own figures.
type totalsJSON struct {
	Accepted   uint64 `json:"accepted"`
	Dispatched uint64 `json:"dispatched"`
	Pending    int    `json:"pending"`   // waiting in the master for a worker, or for room
	Admission  int    `json:"admission"` // of pending, new ones held under --max-conns
	InProgress int    `json:"in_progress"`
	MaxConns   int    `json:"max_conns"`
	Restarts   uint64 `json:"restarts"`
	Workers    int    `json:"workers"`
	Listening  int    `json:"listening"`
	Draining   bool   `json:"draining"`
}

func serveStatus(w http.ResponseWriter, src statsSource) {
	s := src.Stats()
	doc := statusJSON{
		Version: versionString(),
		Workers: workersJSON(src.WorkerStats()),
		Totals: totalsJSON{Accepted: s.Accepted, Dispatched: s.Dispatched, Pending: s.Pending, Admission: s.Admission,
			InProgress: s.InProgress, MaxConns: s.MaxConns, Restarts: s.Restarts, Workers: s.Workers,
			Listening: s.Listening, Draining: s.Draining},
		Listeners: []listenerJSON{},
	}
	for _, q := range src.ListenQueues() {
		doc.Listeners = append(doc.Listeners, listenerJSON{Listener: q.Listener, QueueLength: q.Length, Backlog: q.Backlog})
	}
	writeJSON(w, doc)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// statusTimeout bounds one GET /status.
const statusTimeout = 5 * time.Second

// runStatus is `handoff status`: it prints the fleet behind an admin
// address, once or every second, and returns the exit code.
func runStatus(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("handoff status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	admin := fs.String("admin", "127.0.0.1:9090", "the master's --admin address")
	watch := fs.Bool("watch", false, "print it again every second, until interrupted")
	asJSON := fs.Bool("json", false, "print GET /status, the raw JSON document")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: handoff status [--admin HOST:PORT] [--watch] [--json]\n\n"+
			"Prints each worker of the master whose admin port (--admin) is at HOST:PORT, its listeners'\n"+
			"queues and the totals.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	client := &http.Client{Timeout: statusTimeout}
	for {
		doc, raw, err := fetchStatus(ctx, client, *admin)
		if err != nil && ctx.Err() != nil {
			return 0 // Ctrl-C during a fetch of --watch
		}
		if err != nil {
			fmt.Fprintf(stderr, "handoff status: %v\n", err)
			return 1
		}
		if *watch && !*asJSON {
			_, _ = io.WriteString(stdout, "\x1b[H\x1b[2J") // home, clear
		}
		if *asJSON {
			_, _ = stdout.Write(raw)
		} else {
			writeStatus(stdout, doc, time.Now())
		}
		if !*watch {
			return 0
		}
		select {
		case <-ctx.Done():
			return 0
		case <-time.After(time.Second):
		}
	}
}

// fetchStatus reads GET /status from admin.
func fetchStatus(ctx context.Context, client *http.Client, admin string) (statusJSON, []byte, error) {
	var doc statusJSON
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+admin+"/status", nil)
	if err != nil {
		return doc, nil, fmt.Errorf("--admin %s: %w", admin, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return doc, nil, fmt.Errorf("no answer from %s (%v); is a master running with --admin %s?", admin, err, admin)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return doc, nil, fmt.Errorf("reading %s/status: %w", admin, err)
	}
	if resp.StatusCode != http.StatusOK {
		return doc, nil, fmt.Errorf("%s/status answered %s: is it a handoff master's admin port, of this version?", admin, resp.Status)
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return doc, nil, fmt.Errorf("%s/status: %w", admin, err)
	}
	return doc, raw, nil
}

// writeStatus prints doc as columns within 100 characters, as pm2 ls does.
func writeStatus(w io.Writer, doc statusJSON, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "ID\tPID\tSLOT\tSTATE\tUPTIME\tACTIVE\tBUSY\tUNREAD\tRSS\tRESTARTS\tLAST PONG\t")
	stalled := false
	for _, x := range doc.Workers {
		busy, pong := "-", "-"
		if x.Busy != nil {
			busy = strconv.Itoa(*x.Busy)
		}
		if x.LastPong != nil {
			pong = shortDuration(now.Sub(*x.LastPong)) + " ago"
		}
		state := x.State
		if x.Stalled {
			state += "*"
			stalled = true
		}
		fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%d\t%s\t%d\t%s\t%d\t%s\t\n", x.ID, x.PID, x.Slot, state,
			shortDuration(now.Sub(x.Started)), x.Active, busy, x.Unread, humanSize(x.RSS), x.Restarts, pong)
	}
	_ = tw.Flush()
	if len(doc.Listeners) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "LISTENER\tQUEUE\tBACKLOG")
		for _, l := range doc.Listeners {
			fmt.Fprintf(tw, "%s\t%d\t%d\n", l.Listener, l.QueueLength, l.Backlog)
		}
		_ = tw.Flush()
	}
	t := doc.Totals
	maxConns := "no cap"
	if t.MaxConns > 0 {
		maxConns = "of " + strconv.Itoa(t.MaxConns)
	}
	draining := ""
	if t.Draining {
		draining = ", draining"
	}
	fmt.Fprintf(w, "\n%d of %d workers listening%s; %d restarts; accepted %d, dispatched %d\n", t.Listening, t.Workers, draining, t.Restarts, t.Accepted, t.Dispatched)
	fmt.Fprintf(w, "in progress %d (%s); pending %d, of them %d held under --max-conns\n", t.InProgress, maxConns, t.Pending, t.Admission)
	if stalled {
		fmt.Fprintln(w, "* stalled: not reading its connections, routed around")
	}
	fmt.Fprintln(w, doc.Version)
}

// shortDuration writes d rounded for a column: 45s, 12m, 3h, 2d.
func shortDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "d"
}

// humanSize writes n bytes for a column: 812KiB, 10.9MiB, 1.2GiB.
func humanSize(n int64) string {
	switch {
	case n < 1<<20:
		return strconv.FormatInt(n>>10, 10) + "KiB"
	case n < 1<<30:
		return strconv.FormatFloat(float64(n)/(1<<20), 'f', 1, 64) + "MiB"
	}
	return strconv.FormatFloat(float64(n)/(1<<30), 'f', 1, 64) + "GiB"
}
