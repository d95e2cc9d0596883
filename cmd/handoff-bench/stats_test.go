package main

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestProcCPU(t *testing.T) {
	t.Parallel()
	// Fields 14 and 15 (utime, stime) are 250 and 50 in every line.
	tail := " 0 0 0 0 0 0 0 0 0 250 50 0 0 20 0 4 0 1234 0 0"
	for _, tc := range []struct {
		name, stat string
		want       time.Duration
		wantErr    string
	}{
		{"plain", "4242 (handoff-bench) S 1" + tail, 3 * time.Second, ""},
		{"spaces in name", "4242 (my server) R 1" + tail, 3 * time.Second, ""},
		{"parens in name", "4242 (a) (b) S) S 1" + tail, 3 * time.Second, ""},
		{"no name", "4242 S 1 2 3", 0, "no command name"},
		{"short", "4242 (x) S 1 2 3", 0, "fields"},
		{"bad utime", "4242 (x) S 1 0 0 0 0 0 0 0 0 0 x 50", 0, "utime"},
		{"bad stime", "4242 (x) S 1 0 0 0 0 0 0 0 0 0 250 -", 0, "stime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := procCPU([]byte(tc.stat))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("procCPU error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("procCPU = %s, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestProcCPUSelf(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Skip("no /proc:", err)
	}
	if _, err := procCPU(b); err != nil {
		t.Errorf("procCPU(/proc/self/stat): %v", err)
	}
	if readCPU(os.Getpid()) < 0 {
		t.Error("readCPU of this process < 0")
	}
	if got := readCPU(-1); got != 0 {
		t.Errorf("readCPU(-1) = %s, want 0", got)
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

func TestCtxSwitches(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, status string
		want         uint64
		ok           bool
	}{
		{"both", "Name:\tx\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t3\n", 123, true},
		{"one missing", "voluntary_ctxt_switches:\t120\n", 0, false},
		{"bad number", "voluntary_ctxt_switches:\tx\nnonvoluntary_ctxt_switches:\t3\n", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := ctxSwitches([]byte(tc.status))
			if (err == nil) != tc.ok || got != tc.want {
				t.Errorf("ctxSwitches = %d, %v; want %d, ok %v", got, err, tc.want, tc.ok)
			}
		})
	}
	if readCtxSwitches(os.Getpid()) == 0 {
		t.Error("readCtxSwitches of this process = 0")
	}
}
