//go:build linux

package balancer

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// This file sizes the pool to the CPUs the master may use: the default
// worker count (DefaultWorkers), each worker's GOMAXPROCS share, and the
// CPU each worker is pinned to with Options.CPUAffinity.
//
// The CPU limit is that of the cgroup, as Go 1.25+ reads it for its own
// GOMAXPROCS default (internal/runtime/cgroup): the cpu controller's
// cgroup from /proc/self/cgroup (v1 if a v1 hierarchy has the cpu
// controller, else v2), found under its mount in /proc/self/mountinfo,
// and its quota over its period: cpu.max ("max 100000" or "QUOTA
// PERIOD") in v2, cpu.cfs_quota_us and cpu.cfs_period_us in v1. Unlike
// Go, which reads only the leaf, this walks up to the mount's root and
// takes the tightest limit on the way, since a parent's limit binds its
// children too. And unlike Go's GOMAXPROCS, which a limit never takes
// below 2, the worker count goes down to 1: a 1-CPU container gets one
// worker, not two processes that share one CPU.

// cpuPlan is what New decides about the CPUs, once.
type cpuPlan struct {
	limit int   // DefaultWorkers(): the CPUs the cgroup allows, at least 1
	share int   // each worker's GOMAXPROCS: max(1, limit / Options.Workers), 1 if pinned
	pin   []int // with CPUAffinity, the CPUs the master may run on; else nil
	// unpinned, if not "", is why CPUAffinity pins nothing, for New to log.
	unpinned string
}

// planCPUs reads the CPU limit and, with CPUAffinity, the master's CPU
// mask.
func planCPUs(opts Options) cpuPlan {
	var allowed []int
	if opts.CPUAffinity {
		allowed = allowedCPUs()
	}
	return planCPUsFor(opts, DefaultWorkers(), allowed)
}

// planCPUsFor is planCPUs with the CPU limit and the allowed CPUs given.
//
// CPUAffinity pins only when the CPUs the master may run on are all its
// to use. Under a quota (a container limited to 2 CPUs' time on a 48-CPU
// host, its cpuset the whole host) the list of allowed CPUs is the host's,
// and pinning would put the workers of every such container on the
// host's first CPUs, and leave the rest idle: then nothing is pinned,
// and New says why. A pinned worker runs on one CPU, so its GOMAXPROCS
// share is 1.
func planCPUsFor(opts Options, limit int, allowed []int) cpuPlan {
	p := cpuPlan{limit: limit}
	workers := opts.Workers
	if workers == 0 {
		workers = p.limit
	}
	p.share = gomaxprocsShare(p.limit, workers)
	switch {
	case !opts.CPUAffinity:
	case len(allowed) == 0:
		p.unpinned = "CPUAffinity: the CPUs this process may run on cannot be read; not pinning the workers"
	case limit < len(allowed):
		p.unpinned = fmt.Sprintf("CPUAffinity: a CPU quota of %d allows less than the %d CPUs this process may run on, "+
			"which others may share; not pinning the workers (pin with a cpuset instead)", limit, len(allowed))
	default:
		p.pin = allowed
		p.share = 1
	}
	return p
}

// gomaxprocsShare is a worker's share of cpus among workers, at least 1.
func gomaxprocsShare(cpus, workers int) int {
	return max(1, cpus/max(workers, 1))
}

// DefaultWorkers is the worker count that Options.Workers 0 means: the
// CPU limit of the master's cgroup (its quota over its period, rounded
// up), at least 1 and at most runtime.NumCPU() (the CPUs in its affinity
// mask); runtime.NumCPU() without a limit. It reads the cgroup files on
// every call.
func DefaultWorkers() int {
	n := runtime.NumCPU()
	if lim, ok := cgroupCPULimit(os.ReadFile); ok {
		n = min(n, max(1, int(math.Ceil(lim))))
	}
	return n
}

// cgroupCPULimit returns the CPU limit of this process's cgroup, in CPUs,
// reading files with read; ok is false if there is none, or if the files
// cannot be read or parsed (no limit is then assumed, as Go does).
func cgroupCPULimit(read func(string) ([]byte, error)) (limit float64, ok bool) {
	data, err := read("/proc/self/cgroup")
	if err != nil {
		return 0, false
	}
	path, v2, found := parseProcCgroup(data)
	if !found {
		return 0, false
	}
	if data, err = read("/proc/self/mountinfo"); err != nil {
		return 0, false
	}
	mnt, rel, found := parseMountInfo(data, path, v2)
	if !found {
		return 0, false
	}
	for {
		if l, has := readCPULimit(read, mnt+rel, v2); has && (!ok || l < limit) {
			limit, ok = l, true
		}
		if rel == "" {
			return limit, ok
		}
		rel = rel[:strings.LastIndexByte(rel, '/')]
	}
}

// readCPULimit reads the limit of the cgroup at dir; has is false if it
// has none or its files are missing or malformed.
func readCPULimit(read func(string) ([]byte, error), dir string, v2 bool) (float64, bool) {
	if v2 {
		data, err := read(dir + "/cpu.max")
		if err != nil {
			return 0, false
		}
		f := strings.Fields(string(data))
		if len(f) != 2 || f[0] == "max" {
			return 0, false
		}
		quota, err1 := strconv.ParseInt(f[0], 10, 64)
		period, err2 := strconv.ParseInt(f[1], 10, 64)
		if err1 != nil || err2 != nil || quota <= 0 || period <= 0 {
			return 0, false
		}
		return float64(quota) / float64(period), true
	}
	quota, ok := readInt(read, dir+"/cpu.cfs_quota_us")
	if !ok || quota <= 0 { // -1: no limit
		return 0, false
	}
	period, ok := readInt(read, dir+"/cpu.cfs_period_us")
	if !ok || period <= 0 {
		return 0, false
	}
	return float64(quota) / float64(period), true
}

func readInt(read func(string) ([]byte, error), path string) (int64, bool) {
	data, err := read(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(data)), 10, 64)
	return n, err == nil
}

// parseProcCgroup finds the cpu controller's cgroup in /proc/self/cgroup:
// a v1 hierarchy listing "cpu" among its controllers takes precedence,
// as in Go; else the v2 one ("0::PATH").
func parseProcCgroup(data []byte) (path string, v2, ok bool) {
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.SplitN(line, ":", 3)
		if len(f) != 3 || !strings.HasPrefix(f[2], "/") {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			path, v2, ok = f[2], true, true
			continue
		}
		for _, c := range strings.Split(f[1], ",") {
			if c == "cpu" {
				return f[2], false, true
			}
		}
	}
	return path, v2, ok
}

// parseMountInfo finds, in /proc/self/mountinfo, the mount of the cgroup
// hierarchy that holds cgroup (a cgroup2 mount, or a cgroup mount with
// the cpu controller), and returns its mount point and cgroup's path
// under it ("" for its root, else starting with "/"). A mount whose root
// is not above cgroup, or a cgroup outside this cgroup namespace
// ("/.."), does not match.
func parseMountInfo(data []byte, cgroup string, v2 bool) (mnt, rel string, ok bool) {
	for _, line := range strings.Split(string(data), "\n") {
		// ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
		f := strings.Fields(line)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(f) {
			continue
		}
		fstype, super := f[sep+1], ""
		if sep+3 < len(f) {
			super = f[sep+3]
		}
		switch {
		case v2 && fstype == "cgroup2":
		case !v2 && fstype == "cgroup" && hasController(super, "cpu"):
		default:
			continue
		}
		root := unescapeMount(f[3])
		if root == "/" {
			rel = cgroup
		} else if cgroup == root || strings.HasPrefix(cgroup, root+"/") {
			rel = cgroup[len(root):]
		} else {
			continue
		}
		if rel == "/.." || strings.HasPrefix(rel, "/../") {
			continue
		}
		return unescapeMount(f[4]), strings.TrimSuffix(rel, "/"), true
	}
	return "", "", false
}

func hasController(options, name string) bool {
	for _, o := range strings.Split(options, ",") {
		if o == name {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes of a path ("\040" for a
// space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// allowedCPUs lists the CPUs the master may run on, in order.
func allowedCPUs() []int {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil
	}
	var cpus []int
	for i := 0; i < len(set)*64; i++ {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus
}

// cpuFor is the CPU the worker of s is pinned to, or -1.
func (p cpuPlan) cpuFor(s *slot) int {
	if len(p.pin) == 0 {
		return -1
	}
	return p.pin[s.index%len(p.pin)]
}

// gomaxprocsFor is the GOMAXPROCS the master sets for the worker of s: its
// share, or 0 if the user set GOMAXPROCS, in the master's environment, in
// Options.Env or in Fork's env.
func (b *Balancer) gomaxprocsFor(s *slot) int {
	if _, set := os.LookupEnv("GOMAXPROCS"); set || setsEnv(b.opts.Env, "GOMAXPROCS") || setsEnv(s.env, "GOMAXPROCS") {
		return 0
	}
	return b.cpus.share
}

// setsEnv reports whether env sets the variable name.
func setsEnv(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// startOnCPU starts cmd with its affinity set to cpu alone. Setting it
// after Start would race the child's runtime, whose threads copy the
// mask they start with; so the mask is set on the thread that forks
// (syscall.forkExec clones on the calling thread, and a child inherits
// its parent thread's mask), and put back after. The goroutine stays on
// that thread throughout; if the mask cannot be put back, it stays locked
// to it, so that no other goroutine runs on one CPU, and the thread ends
// with the goroutine.
func startOnCPU(cmd *exec.Cmd, cpu int) error {
	runtime.LockOSThread()
	var old, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &old); err != nil {
		runtime.UnlockOSThread()
		return os.NewSyscallError("sched_getaffinity", err)
	}
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		runtime.UnlockOSThread()
		return os.NewSyscallError("sched_setaffinity", err)
	}
	err := cmd.Start()
	if unix.SchedSetaffinity(0, &old) == nil {
		runtime.UnlockOSThread()
	}
	return err
}
