//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// Output of perf stat 6.1 on Linux 6.18 (the bench's machine), captured
// with `perf stat -x, -o FILE -e raw_syscalls:sys_enter,context-switches
// -p PID,PID` stopped by SIGINT, attached to `yes >/dev/null` and `sleep 60`.
const perfSampleBusy = `# started on Tue Dec  1 20:06:30 2026

72436,,raw_syscalls:sys_enter,98686155,100.00,,
79,,context-switches,98686155,100.00,,
`

// The same on two sleeping processes, written to stderr (no -o): the
// counters never ran.
const perfSampleIdle = `<not counted>,,raw_syscalls:sys_enter,0,100.00,,
<not counted>,,context-switches,0,100.00,,
`

// With -D -1 and --control, as the bench runs it: perf's answers to the
// control commands go to stderr, the counts to -o.
const perfSampleControlled = `# started on Tue Dec  1 20:06:52 2026

40052,,raw_syscalls:sys_enter,68484467,100.00,,
19,,context-switches,68484467,100.00,,
`

func TestParsePerfStat(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		out     string
		want    perfCounts
		wantErr string
	}{
		{"busy", perfSampleBusy, perfCounts{Syscalls: 72436, ContextSwitches: 79}, ""},
		{"controlled", perfSampleControlled, perfCounts{Syscalls: 40052, ContextSwitches: 19}, ""},
		{"never ran", perfSampleIdle, perfCounts{}, ""},
		{"stderr messages around", "Events disabled\nEvents enabled\n" + perfSampleBusy + "Events disabled\n",
			perfCounts{Syscalls: 72436, ContextSwitches: 79}, ""},
		{"other events ignored", perfSampleBusy + "5.11,msec,task-clock,5111227,100.00,0.439,CPUs utilized\n",
			perfCounts{Syscalls: 72436, ContextSwitches: 79}, ""},
		{"one line per PMU summed", perfSampleBusy + "21,,context-switches,98686155,100.00,,\n",
			perfCounts{Syscalls: 72436, ContextSwitches: 100}, ""},
		{"float count", "1.5e+03,,raw_syscalls:sys_enter,1,100.00,,\n2.0,,context-switches,1,100.00,,\n",
			perfCounts{Syscalls: 1500, ContextSwitches: 2}, ""},
		{"empty", "", perfCounts{}, "no raw_syscalls:sys_enter"},
		{"header only", "# started on Tue Dec  1 20:06:30 2026\n\n", perfCounts{}, "no raw_syscalls:sys_enter"},
		{"no context switches", "72436,,raw_syscalls:sys_enter,98686155,100.00,,\n", perfCounts{}, "no context-switches"},
		{"not supported", strings.Replace(perfSampleBusy, "79,", "<not supported>,", 1), perfCounts{}, "<not supported>"},
		{"bad count", strings.Replace(perfSampleBusy, "72436,", "72x36,", 1), perfCounts{}, "bad count"},
		{"negative count", strings.Replace(perfSampleBusy, "72436,", "-1,", 1), perfCounts{}, "bad count"},
		{"error text", "Problems finding threads of monitor\n\n Usage: perf stat [<options>] [<command>]\n", perfCounts{}, "no raw_syscalls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := parsePerfStat([]byte(tc.out))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("parsePerfStat error = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parsePerfStat = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestPerfStatArgs(t *testing.T) {
	t.Parallel()
	got := perfStatArgs([]int{12, 345}, "/tmp/x.perfstat")
	want := []string{"stat", "-x,", "-o", "/tmp/x.perfstat", "-D", "-1", "--control", "fd:3,4",
		"-e", "raw_syscalls:sys_enter,context-switches", "-p", "12,345"}
	if !slices.Equal(got, want) {
		t.Errorf("perfStatArgs = %q, want %q", got, want)
	}
}

func TestFirstLine(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"", "no message"},
		{"\n  \nEvents disabled\nEvents enabled\n", "no message"},
		{"Events disabled\n  Problems finding threads of monitor\n\nUsage", "Problems finding threads of monitor"},
	} {
		if got := firstLine([]byte(tc.in)); got != tc.want {
			t.Errorf("firstLine(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// perfOrSkip returns perf's path, or skips if it cannot count here.
func perfOrSkip(t *testing.T) string {
	t.Helper()
	perf, err := exec.LookPath("perf")
	if err != nil {
		t.Skip("perf is not on PATH")
	}
	if err := probePerfStat(context.Background(), perf); err != nil {
		t.Skip("perf stat cannot count here:", err)
	}
	return perf
}

// TestPerfStatCountsThisProcess runs the bench's perf stat on the test
// process: the syscalls it makes between enable and stop are counted,
// and the ones before enable are not.
func TestPerfStatCountsThisProcess(t *testing.T) {
	perf := perfOrSkip(t)
	out := filepath.Join(t.TempDir(), "self.perfstat")
	p, err := startPerfStat(perf, []int{os.Getpid()}, out)
	if err != nil {
		t.Fatal(err)
	}
	// Disabled: not counted.
	const before = 200_000
	for range before {
		syscall.Getppid()
	}
	if err := p.command("enable"); err != nil {
		_, _ = p.stop()
		t.Fatal(err)
	}
	const during = 5000
	for range during {
		syscall.Getppid()
	}
	c, err := p.stop()
	if err != nil {
		t.Fatal(err)
	}
	if c.Syscalls < during || c.Syscalls >= before {
		t.Errorf("perf stat counted %d syscalls; made %d while enabled and %d before", c.Syscalls, during, before)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("perf's output file is left behind: %v", err)
	}
}

func TestPerfStatGonePID(t *testing.T) {
	perf := perfOrSkip(t)
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	gone := cmd.Process.Pid // reaped: no such process now
	_, err := startPerfStat(perf, []int{gone}, filepath.Join(t.TempDir(), "gone.perfstat"))
	if err == nil {
		t.Fatalf("startPerfStat on pid %d, which has exited, succeeded", gone)
	}
	_, err = startPerfWindow(perf, t.TempDir(), "t", os.Getpid(), []int{gone})
	if err == nil || !strings.Contains(err.Error(), "workers") {
		t.Errorf("startPerfWindow with a gone worker: error %v, want one about the workers", err)
	}
	if _, err := startPerfStat(perf, nil, "x"); err == nil {
		t.Error("startPerfStat without pids succeeded")
	}
}

func TestPerfWindow(t *testing.T) {
	perf := perfOrSkip(t)
	sleeper := exec.Command("sleep", "60")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = sleeper.Process.Kill()
		_ = sleeper.Wait()
	})
	for _, tc := range []struct {
		name   string
		master int
	}{
		{"with master", os.Getpid()},
		{"workers only", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := startPerfWindow(perf, t.TempDir(), "t", tc.master, []int{sleeper.Process.Pid})
			if err != nil {
				t.Fatal(err)
			}
			for range 1000 {
				syscall.Getppid()
			}
			m, workers, err := w.stop()
			if err != nil {
				t.Fatal(err)
			}
			if (m != nil) != (tc.master > 0) {
				t.Fatalf("master counts %+v for master pid %d", m, tc.master)
			}
			if m != nil && m.Syscalls < 1000 {
				t.Errorf("master counted %d syscalls, want at least 1000", m.Syscalls)
			}
			// The sleeper makes almost no syscall (some if it was still
			// starting); the test's own are not counted as the workers'.
			if workers.Syscalls >= 1000 {
				t.Errorf("a sleeping worker made %d syscalls: the master's counted as the workers'?", workers.Syscalls)
			}
		})
	}
}
