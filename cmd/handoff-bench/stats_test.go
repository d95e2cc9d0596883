//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/procfs"
)

// fakeProc is a /proc of its own in a temporary directory, for procfs to
// read: stat holds /proc/PID/stat by pid, and status each thread's
// /proc/PID/task/TID/status by pid and tid.
func fakeProc(t *testing.T, stat map[int]string, status map[int]map[int]string) procfs.FS {
	t.Helper()
	dir := t.TempDir()
	write := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for pid, line := range stat {
		write(filepath.Join(dir, strconv.Itoa(pid), "stat"), line)
	}
	for pid, threads := range status {
		if err := os.MkdirAll(filepath.Join(dir, strconv.Itoa(pid), "task"), 0o755); err != nil {
			t.Fatal(err)
		}
		for tid, content := range threads {
			write(filepath.Join(dir, strconv.Itoa(pid), "task", strconv.Itoa(tid), "status"), content)
		}
	}
	fs, err := procfs.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	return fs
}

func TestReadCPU(t *testing.T) {
	t.Parallel()
	// Fields 14 and 15 (utime, stime) are 250 and 50 in every line; the
	// rest is as long as a real line (52 fields).
	tail := " 0 0 0 0 0 0 0 0 0 250 50 0 0 20 0 4 0 1234 0 0" + strings.Repeat(" 0", 32) + "\n"
	for _, tc := range []struct {
		name, stat string
		want       time.Duration
	}{
		{"plain", "4242 (handoff-bench) S 1" + tail, 3 * time.Second},
		{"spaces in name", "4242 (my server) R 1" + tail, 3 * time.Second},
		{"parens in name", "4242 (a) (b) S) S 1" + tail, 3 * time.Second},
		// Unreadable lines count as a process that is gone.
		{"no name", "4242 S 1 2 3", 0},
		{"short", "4242 (x) S 1 2 3", 0},
		{"bad utime", "4242 (x) S 1 0 0 0 0 0 0 0 0 0 x 50" + strings.Repeat(" 0", 37), 0},
		{"bad stime", "4242 (x) S 1 0 0 0 0 0 0 0 0 0 250 -" + strings.Repeat(" 0", 37), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := fakeProc(t, map[int]string{4242: tc.stat}, nil)
			if got := readCPU(fs, 4242); got != tc.want {
				t.Errorf("readCPU = %s, want %s", got, tc.want)
			}
			if got := readCPU(fs, 4243); got != 0 {
				t.Errorf("readCPU of a pid not in /proc = %s, want 0", got)
			}
		})
	}
}

func TestReadCtxSwitches(t *testing.T) {
	t.Parallel()
	status := func(voluntary, involuntary string) string {
		return "Name:\tx\nState:\tS (sleeping)\nvoluntary_ctxt_switches:\t" + voluntary + "\nnonvoluntary_ctxt_switches:\t" + involuntary + "\n"
	}
	for _, tc := range []struct {
		name    string
		threads map[int]string
		want    uint64
	}{
		{"one thread", map[int]string{7: status("120", "3")}, 123},
		// /proc/PID/status has only the main thread's; every thread counts.
		{"threads summed", map[int]string{7: status("120", "3"), 8: status("10", "0"), 9: status("1", "1")}, 135},
		{"counts missing", map[int]string{7: "Name:\tx\n", 8: status("10", "0")}, 10},
		{"bad number", map[int]string{7: status("x", "3"), 8: status("10", "0")}, 13},
		{"no threads", map[int]string{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := fakeProc(t, nil, map[int]map[int]string{7: tc.threads})
			if got := readCtxSwitches(fs, 7); got != tc.want {
				t.Errorf("readCtxSwitches = %d, want %d", got, tc.want)
			}
			if got := readCtxSwitches(fs, 8); got != 0 {
				t.Errorf("readCtxSwitches of a pid not in /proc = %d, want 0", got)
			}
		})
	}
}

func TestReadProcSelf(t *testing.T) {
	t.Parallel()
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Skip("no /proc:", err)
	}
	// Spin until the kernel has charged this process a tick.
	for end := time.Now().Add(5 * time.Second); readCPU(fs, os.Getpid()) == 0 && time.Now().Before(end); {
		spin(time.Millisecond)
	}
	if got := readCPU(fs, os.Getpid()); got <= 0 {
		t.Errorf("readCPU of this process = %s, want more than 0", got)
	}
	if got := readCPU(fs, -1); got != 0 {
		t.Errorf("readCPU(-1) = %s, want 0", got)
	}
	if readCtxSwitches(fs, os.Getpid()) == 0 {
		t.Error("readCtxSwitches of this process = 0")
	}
}

func TestParseStatsReply(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		in     string
		pid    int
		served uint64
		ok     bool
	}{
		{"good", "123 456\n", 123, 456, true},
		{"zero", "7 0", 7, 0, true},
		{"one field", "123\n", 0, 0, false},
		{"three fields", "1 2 3", 0, 0, false},
		{"bad pid", "x 2", 0, 0, false},
		{"zero pid", "0 2", 0, 0, false},
		{"negative count", "1 -2", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pid, served, err := parseStatsReply([]byte(tc.in))
			if (err == nil) != tc.ok || pid != tc.pid || served != tc.served {
				t.Errorf("parseStatsReply(%q) = %d, %d, %v", tc.in, pid, served, err)
			}
		})
	}
}

func TestDiffSnapshots(t *testing.T) {
	t.Parallel()
	before := snapshot{
		served:    map[int]uint64{10: 100, 11: 200, 12: 50},
		workerCPU: map[int]time.Duration{10: time.Second, 11: time.Second, 12: time.Second},
		masterCPU: time.Second,
	}
	after := snapshot{
		// 12 died, 13 is its replacement.
		served:    map[int]uint64{10: 1100, 11: 700, 13: 300},
		workerCPU: map[int]time.Duration{10: 3 * time.Second, 11: 2 * time.Second, 13: 500 * time.Millisecond},
		masterCPU: 1500 * time.Millisecond,
	}
	u := diffSnapshots(before, after)
	if u.total != 1000+500+300 {
		t.Errorf("total = %d, want 1800", u.total)
	}
	if u.masterCPU != 500*time.Millisecond {
		t.Errorf("masterCPU = %s, want 500ms", u.masterCPU)
	}
	if u.workerCPU != 3500*time.Millisecond {
		t.Errorf("workerCPU = %s, want 3.5s", u.workerCPU)
	}
	if most, least := u.split(); most != 1000 || least != 300 {
		t.Errorf("split = %d/%d, want 1000/300", most, least)
	}
	// A counter that went backwards (a reused pid) never underflows.
	u = diffSnapshots(snapshot{served: map[int]uint64{1: 50}}, snapshot{served: map[int]uint64{1: 10}})
	if u.total != 0 {
		t.Errorf("backwards counter: total = %d, want 0", u.total)
	}
	if most, least := (usage{}).split(); most != 0 || least != 0 {
		t.Errorf("empty split = %d/%d", most, least)
	}
}
