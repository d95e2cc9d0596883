//go:build linux

package main

import (
	"bytes"
	"github.com/handoff-go/handoff/worker"
	"io"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// This file builds the loggers. One rule holds for every line: with
// --log-format json each line is one JSON object, the workers' and the
// http.Servers' included, and a duration is a string in Go's notation
// with its unit ("1.5s", from time.Duration.String), never a bare number.

// Environment variables by which the master tells the demo workers how to
// log, so that their lines match the master's even when --log-format was
// left to its default or the workers run a COMMAND that re-runs handoff.
const (
	envLogFormat = worker.EnvLogFormat // json or console, as resolved by the master
	envLogLevel  = "HANDOFF_LOG_LEVEL" // debug, info, warn or error
)

// logFormat resolves --log-format: the flag if given, else (in a worker)
// what the master passed in envLogFormat, else console on a terminal and
// json otherwise.
func logFormat(c *config) string {
	if c.logFormat != "" {
		return c.logFormat
	}
	if f := os.Getenv(envLogFormat); f == "json" || f == "console" {
		return f
	}
	if fi, err := os.Stderr.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
		return "console"
	}
	return "json"
}

// logLevel resolves --log-level: the flag if given explicitly, else (in a
// worker) what the master passed in envLogLevel, else the flag's default.
func logLevel(c *config) zerolog.Level {
	name := c.logLevel
	if !c.logLevelSet {
		if l := os.Getenv(envLogLevel); l != "" {
			name = l
		}
	}
	level, err := zerolog.ParseLevel(name)
	if err != nil || name == "" {
		level = zerolog.InfoLevel
	}
	return level
}

// workerLogEnv is what the master adds to every worker's environment.
func workerLogEnv(c *config) []string {
	return []string{envLogFormat + "=" + logFormat(c), envLogLevel + "=" + logLevel(c).String()}
}

func newLogger(c *config) zerolog.Logger {
	return newLoggerTo(c, os.Stderr)
}

// newLoggerTo is newLogger writing to out.
func newLoggerTo(c *config, out io.Writer) zerolog.Logger {
	if logFormat(c) == "console" {
		out = zerolog.ConsoleWriter{Out: out, TimeFormat: "15:04:05.000"}
	}
	zerolog.TimeFieldFormat = time.RFC3339Nano
	return zerolog.New(out).Level(logLevel(c)).With().Timestamp().Logger()
}

// errorLogInterval is the most often an http.Server's ErrorLog writes a
// line; the lines in between are counted and reported with the next one.
const errorLogInterval = time.Second

// httpErrorLog returns an http.Server ErrorLog that writes through log, at
// warn level, with source set to source, at most once per
// errorLogInterval. Lines that come sooner are held back: when the
// interval ends the last of them is written, with dropped set to how many
// before it were never written.
func httpErrorLog(log zerolog.Logger, source string) *log.Logger {
	return newLogAdapter(&rateLimitedLog{log: log.With().Str("source", source).Logger(), every: errorLogInterval, now: time.Now})
}

func newLogAdapter(w io.Writer) *log.Logger { return log.New(w, "", 0) }

// rateLimitedLog is an io.Writer for a log.Logger: each Write is one line.
type rateLimitedLog struct {
	log   zerolog.Logger
	every time.Duration
	now   func() time.Time // time.Now, or a fake in tests

	// mu guards the fields below it; nothing blocks under it but the
	// zerolog write.
	mu      sync.Mutex
	next    time.Time   // when the next line may be written
	dropped int         // lines dropped since the last one written
	last    string      // the last line dropped
	flush   *time.Timer // armed while lines are dropped: reports them at next
}

func (r *rateLimitedLog) Write(p []byte) (int, error) {
	msg := string(bytes.TrimRight(p, "\n"))
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if now.Before(r.next) {
		r.dropped++
		r.last = msg
		if r.flush == nil {
			r.flush = time.AfterFunc(r.next.Sub(now), r.flushDropped)
		}
		return len(p), nil
	}
	r.writeLocked(now, msg)
	return len(p), nil
}

// flushDropped reports the lines dropped in an interval that no later line
// reported. It runs on the timer's goroutine, which ends with it.
func (r *rateLimitedLog) flushDropped() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.flush = nil
	if r.dropped > 0 {
		r.dropped-- // the last one is written now
		r.writeLocked(r.now(), r.last)
	}
}

// writeLocked writes msg with the count of the lines dropped before it.
func (r *rateLimitedLog) writeLocked(now time.Time, msg string) {
	e := r.log.Warn()
	if r.dropped > 0 {
		e = e.Int("dropped", r.dropped)
	}
	e.Msg(msg)
	r.dropped, r.last = 0, ""
	r.next = now.Add(r.every)
	if r.flush != nil {
		r.flush.Stop()
		r.flush = nil
	}
}

// stop cancels a pending report of dropped lines, for tests.
func (r *rateLimitedLog) stop() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.flush != nil {
		r.flush.Stop()
		r.flush = nil
	}
}

// mutableWriter writes through to w until muted. A master that failed to
// start mutes its log once it has said why in one plain line, so that
// the balancer's account of tearing down what never served does not
// bury it.
type mutableWriter struct {
	w     io.Writer
	muted atomic.Bool
}

func (m *mutableWriter) Write(p []byte) (int, error) {
	if m.muted.Load() {
		return len(p), nil
	}
	return m.w.Write(p)
}
