//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/handoff-go/handoff/internal/proctest"
	"golang.org/x/sys/unix"
)

// envRequireRoot is the variable (CI sets it, as root) that makes the
// tests needing root fail rather than skip; see internal/netnstest.
const envRequireRoot = "HANDOFF_REQUIRE_NETNS"

// envOf returns the value of name in process pid's environment, and
// whether it is set.
func envOf(t *testing.T, pid int, name string) (string, bool) {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(name+"=")); ok {
			return string(v), true
		}
	}
	return "", false
}

// allowedList returns process pid's Cpus_allowed_list, such as "0-1".
func allowedList(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no Cpus_allowed_list in /proc/%d/status", pid)
	return ""
}

// cpuCgroup makes a child cgroup of the cpu controller, with a quota of
// quota µs per period µs, and returns its cgroup.procs file; the cgroup
// is removed at cleanup, once the processes put in it have gone (so call
// it before starting them: cleanups run last first). Without root or a
// writable cpu controller it skips, or fails with HANDOFF_REQUIRE_NETNS=1.
func cpuCgroup(t *testing.T, quota, period int) string {
	t.Helper()
	unavailable := func(err error) {
		t.Helper()
		if os.Getenv(envRequireRoot) == "1" {
			t.Fatalf("cannot make a CPU-limited cgroup: %v; %s=1 requires this test to run (as root)", err, envRequireRoot)
		}
		t.Skipf("cannot make a CPU-limited cgroup: %v; this test needs root and a writable cpu controller (with %s=1 it fails instead of skipping)", err, envRequireRoot)
	}
	if os.Geteuid() != 0 {
		unavailable(errors.New("not root"))
	}
	dir, v2, err := ownCPUCgroup()
	if err != nil {
		unavailable(err)
	}
	dir = filepath.Join(dir, fmt.Sprintf("handoff-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		unavailable(err)
	}
	t.Cleanup(func() {
		// The processes were killed; rmdir fails with EBUSY until the
		// last is reaped.
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
				t.Errorf("removing cgroup %s: %v (processes left: %q)", dir, err, procs)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	write := func(name, value string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(value), 0o644); err != nil {
			unavailable(err)
		}
	}
	if v2 {
		write("cpu.max", fmt.Sprintf("%d %d", quota, period))
	} else {
		write("cpu.cfs_period_us", strconv.Itoa(period))
		write("cpu.cfs_quota_us", strconv.Itoa(quota))
	}
	return filepath.Join(dir, "cgroup.procs")
}

// ownCPUCgroup finds the directory of this process's cpu cgroup: under
// the v1 hierarchy with the cpu controller if there is one, else under
// cgroup2, whose cpu controller it enables for children if need be.
func ownCPUCgroup() (dir string, v2 bool, err error) {
	cg, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", false, err
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false, err
	}
	var v1Path, v2Path string
	for _, line := range strings.Split(string(cg), "\n") {
		f := strings.SplitN(line, ":", 3)
		switch {
		case len(f) != 3:
		case f[0] == "0" && f[1] == "":
			v2Path = f[2]
		case slices.Contains(strings.Split(f[1], ","), "cpu"):
			v1Path = f[2]
		}
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if i < 0 || i+3 >= len(f) || f[3] != "/" {
			continue
		}
		switch {
		case v1Path != "" && f[i+1] == "cgroup" && slices.Contains(strings.Split(f[i+3], ","), "cpu"):
			return filepath.Join(f[4], v1Path), false, nil
		case v1Path == "" && v2Path != "" && f[i+1] == "cgroup2":
			dir := filepath.Join(f[4], v2Path)
			ctl, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
			if err != nil || !slices.Contains(strings.Fields(string(ctl)), "cpu") {
				return "", true, fmt.Errorf("cgroup v2 at %s has no cpu controller", dir)
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+cpu"), 0o644); err != nil {
				return "", true, fmt.Errorf("enabling the cpu controller under %s: %w", dir, err)
			}
			return dir, true, nil
		}
	}
	return "", false, errors.New("no cpu cgroup controller is mounted")
}

// startMasterIn runs the CLI as startMaster does, inside the cgroup whose
// cgroup.procs is procs, and with env added to its environment.
func startMasterIn(t *testing.T, procs string, env []string, args ...string) *master {
	t.Helper()
	addr := proctest.FreeAddr(t)
	args = append([]string{"--listen", addr, "--log-format", "json"}, args...)
	cmd := exec.Command(handoffBin, args...)
	if procs != "" {
		// The shell moves itself into the cgroup and becomes the
		// master, with the same pid: its workers start inside.
		cmd = exec.Command("/bin/sh", append([]string{"-c", `echo $$ > "$0" && exec "$@"`, procs, handoffBin}, args...)...)
	}
	cmd.Env = append(os.Environ(), env...)
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	return launch(t, cmd, addr, out)
}

// The default --workers is the cgroup's CPU limit: 1 worker in a 1-CPU
// cgroup (where Go's own GOMAXPROCS would say 2), with GOMAXPROCS 1; 2 in
// a 2-CPU one, each with GOMAXPROCS 1, its share.
func TestCLIDefaultWorkersFollowTheCgroupLimit(t *testing.T) {
	tests := []struct {
		name  string
		cpus  int // the cgroup's quota, in CPUs
		procs int // each worker's GOMAXPROCS
	}{
		{name: "1 CPU", cpus: 1, procs: 1},
		{name: "2 CPUs", cpus: 2, procs: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if runtime.NumCPU() < tt.cpus {
				t.Skipf("%d CPUs here, fewer than the quota's %d", runtime.NumCPU(), tt.cpus)
			}
			procs := cpuCgroup(t, tt.cpus*100000, 100000)
			admin := proctest.FreeAddr(t)
			startMasterIn(t, procs, nil, "--admin", admin)
			ws := workersOf(t, admin)
			if len(ws) != tt.cpus {
				t.Fatalf("%d workers in a %d-CPU cgroup, want %d: %+v", len(ws), tt.cpus, tt.cpus, ws)
			}
			for _, w := range ws {
				if v, _ := envOf(t, w.PID, "GOMAXPROCS"); v != strconv.Itoa(tt.procs) || w.GOMAXPROCS != tt.procs {
					t.Errorf("worker %d: GOMAXPROCS %q in its environment, %d in /workers; want %d", w.ID, v, w.GOMAXPROCS, tt.procs)
				}
			}
		})
	}
}

// Outside any limit the default is every CPU (runtime.NumCPU here),
// each worker with GOMAXPROCS 1.
func TestCLIDefaultWorkersWithoutALimit(t *testing.T) {
	if n := balancer.DefaultWorkers(); n != runtime.NumCPU() {
		t.Skipf("this process is in a CPU-limited cgroup (%d CPUs of %d)", n, runtime.NumCPU())
	}
	admin := proctest.FreeAddr(t)
	startMasterIn(t, "", nil, "--admin", admin)
	ws := workersOf(t, admin)
	if len(ws) != runtime.NumCPU() {
		t.Fatalf("%d workers, want %d (runtime.NumCPU)", len(ws), runtime.NumCPU())
	}
	for _, w := range ws {
		if v, _ := envOf(t, w.PID, "GOMAXPROCS"); v != "1" || w.GOMAXPROCS != 1 {
			t.Errorf("worker %d: GOMAXPROCS %q in its environment, %d in /workers; want 1", w.ID, v, w.GOMAXPROCS)
		}
	}
}

// GOMAXPROCS set by the user (here in the master's environment) is left
// alone, and /workers shows none of the master's.
func TestCLIGOMAXPROCSLeftToTheUser(t *testing.T) {
	admin := proctest.FreeAddr(t)
	startMasterIn(t, "", []string{"GOMAXPROCS=3"}, "--workers", "2", "--admin", admin)
	for _, w := range workersOf(t, admin) {
		if v, _ := envOf(t, w.PID, "GOMAXPROCS"); v != "3" || w.GOMAXPROCS != 0 {
			t.Errorf("worker %d: GOMAXPROCS %q in its environment, %d in /workers; want the user's 3, and none", w.ID, v, w.GOMAXPROCS)
		}
	}
}

// --cpu-affinity pins slot i's worker to the i-th CPU the master may run
// on, and its replacement after SIGHUP to the same; without it the
// workers have the master's whole mask.
func TestCLICPUAffinityPinsEachSlot(t *testing.T) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		t.Fatal(err)
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	if len(cpus) < 2 {
		t.Skipf("this process may run on %d CPU(s), fewer than 2", len(cpus))
	}
	check := func(t *testing.T, ws []workerJSON) {
		t.Helper()
		for _, w := range ws {
			want := cpus[w.Slot%len(cpus)]
			if got := allowedList(t, w.PID); got != strconv.Itoa(want) || w.CPU == nil || *w.CPU != want {
				t.Errorf("worker %d of slot %d: Cpus_allowed_list %q, /workers cpu %s; want %d", w.ID, w.Slot, got, cpuOf(w), want)
			}
		}
	}

	t.Run("pinned", func(t *testing.T) {
		admin := proctest.FreeAddr(t)
		m := startMasterIn(t, "", nil, "--workers", "2", "--cpu-affinity", "--admin", admin)
		ws := workersOf(t, admin)
		if len(ws) != 2 {
			t.Fatalf("/workers: %+v", ws)
		}
		check(t, ws)
		old := map[int]bool{ws[0].PID: true, ws[1].PID: true}
		if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "two new workers after SIGHUP", func() bool {
			ws = workersOf(t, admin)
			return len(ws) == 2 && !old[ws[0].PID] && !old[ws[1].PID]
		})
		check(t, ws)
	})
	t.Run("not pinned", func(t *testing.T) {
		admin := proctest.FreeAddr(t)
		m := startMasterIn(t, "", nil, "--workers", "2", "--admin", admin)
		master := allowedList(t, m.cmd.Process.Pid)
		for _, w := range workersOf(t, admin) {
			if got := allowedList(t, w.PID); got != master || w.CPU != nil {
				t.Errorf("worker %d: Cpus_allowed_list %q, /workers cpu %s; want the master's %q and none", w.ID, got, cpuOf(w), master)
			}
		}
	})
}

// cpuOf is /workers' "cpu" of w, or "none".
func cpuOf(w workerJSON) string {
	if w.CPU == nil {
		return "none"
	}
	return strconv.Itoa(*w.CPU)
}
