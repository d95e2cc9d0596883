//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
)

// runBench runs every selected server against every selected workload.
// It returns what it measured even when it stops early.
func runBench(ctx context.Context, c *config, reg *registry) (*report, error) {
	if err := os.MkdirAll(filepath.Join(c.out, "logs"), 0o755); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "handoff-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	procFS, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, fmt.Errorf("reading CPU and context switches: %w", err)
	}
	env := &serverEnv{exe: exe, workers: c.workers, tmp: tmp, logs: filepath.Join(c.out, "logs"), masterProcs: c.masterProcs, procFS: procFS}
	servers := c.servers
	if p, err := exec.LookPath("node"); err == nil {
		env.node = p
		env.nodeJS = filepath.Join(tmp, "node-cluster.js")
		if err := os.WriteFile(env.nodeJS, []byte(nodeClusterJS), 0o644); err != nil {
			return nil, err
		}
	} else {
		servers = withoutNode(servers)
		fmt.Fprintln(os.Stderr, "handoff-bench: node is not on PATH; skipping the Node.js cluster servers")
	}
	if len(servers) == 0 {
		return nil, errors.New("no server left to run")
	}
	if c.profileDir != "" {
		if err := os.MkdirAll(c.profileDir, 0o755); err != nil {
			return nil, err
		}
	}
	if c.perf {
		if _, err := exec.LookPath("perf"); err != nil {
			return nil, errors.New("-perf: perf is not on PATH")
		}
		if err := os.MkdirAll(filepath.Join(c.out, "perf"), 0o755); err != nil {
			return nil, err
		}
	}
	gen, err := newWrkGenerator(tmp)
	if err != nil {
		return nil, err
	}
	rep := newReport(c, servers, gen.path, env.node)
	env.perfStat, rep.PerfStatNote = choosePerfStat(ctx, c.perfStat)
	if rep.PerfStatNote != "" {
		fmt.Fprintf(os.Stderr, "handoff-bench: not counting syscalls and context switches: %s\n", rep.PerfStatNote)
	}
	perfFailed := false
	total := len(c.workloads) * c.rounds * len(servers)
	n := 0
	for _, wl := range c.workloads {
		for round := range c.rounds {
			for _, name := range interleave(servers, round) {
				n++
				pr := newProgress(os.Stderr, fmt.Sprintf("[%d/%d] %s %s", n, total, wl, name), c.warmup+c.duration)
				run, err := measure(ctx, c, reg, env, gen, name, wl, round)
				pr.done(run)
				if run.PerfStatError != "" && !perfFailed {
					perfFailed = true
					fmt.Fprintf(os.Stderr, "handoff-bench: perf stat failed, so this run has no syscall counts (the report lists every such run): %s\n", run.PerfStatError)
				}
				if err != nil && ctx.Err() != nil {
					return rep, ctx.Err()
				}
				rep.Runs = append(rep.Runs, run)
			}
		}
	}
	return rep, nil
}

// choosePerfStat returns perf's path if syscalls are to be counted, or
// why they are not.
func choosePerfStat(ctx context.Context, want bool) (path, note string) {
	if !want {
		return "", "-perf-stat=false"
	}
	path, err := exec.LookPath("perf")
	if err != nil {
		return "", "perf is not on PATH"
	}
	if err := probePerfStat(ctx, path); err != nil {
		return "", err.Error()
	}
	return path, ""
}

// interleave rotates the server order by round, so each server runs early
// in some rounds and late in others.
func interleave(servers []string, round int) []string {
	k := round % len(servers)
	return append(append([]string(nil), servers[k:]...), servers[:k]...)
}

func withoutNode(servers []string) []string {
	var out []string
	for _, s := range servers {
		if !strings.HasPrefix(s, "node-") {
			out = append(out, s)
		}
	}
	return out
}

// measure runs one server against one workload: start, warm up, measure,
// stop. A failed run is recorded with its error.
func measure(ctx context.Context, c *config, reg *registry, env *serverEnv, gen *wrkGenerator, name, wl string, round int) (runResult, error) {
	run := runResult{Server: name, Workload: wl, Round: round + 1, Workers: c.workers, Generator: "wrk"}
	tag := fmt.Sprintf("%s-%s-r%d", wl, name, round+1)
	runEnv := *env
	if c.profileDir != "" && strings.HasPrefix(name, "handoff-") {
		abs, err := filepath.Abs(filepath.Join(c.profileDir, tag+".pprof"))
		if err != nil {
			return run, err
		}
		runEnv.profile = abs
	}
	fail := func(err error) (runResult, error) {
		run.Error = err.Error()
		return run, err
	}
	s, err := startServer(ctx, reg, &runEnv, name, tag)
	if err != nil {
		return fail(err)
	}
	defer func() {
		s.stop()
		reg.remove(s)
	}()
	spec := newLoadSpec(c, wl, s.port)
	spec.duration = c.warmup
	if c.warmup > 0 {
		if _, err := gen.run(ctx, spec); err != nil {
			return fail(fmt.Errorf("warmup: %w", err))
		}
	}
	spec.duration = c.duration
	before := takeSnapshot(ctx, env.procFS, s)
	if runEnv.profile != "" && s.master != nil {
		_ = syscall.Kill(s.master.pid(), syscall.SIGUSR1)
	}
	stopPerf := startPerf(c, s, before, tag)
	var window *perfWindow
	if env.perfStat != "" {
		masterPID := 0
		if s.master != nil {
			masterPID = s.master.pid()
		}
		var perr error
		if window, perr = startPerfWindow(env.perfStat, env.tmp, tag, masterPID, before.workerPIDs()); perr != nil {
			run.PerfStatError = perr.Error()
		}
	}
	res, err := gen.run(ctx, spec)
	var counted *perfUsage
	if window != nil {
		master, workers, perr := window.stop()
		if perr != nil {
			run.PerfStatError = perr.Error()
		} else {
			counted = &perfUsage{master: master, workers: workers}
		}
	}
	stopPerf()
	after := takeSnapshot(ctx, env.procFS, s)
	if runEnv.profile != "" && s.master != nil {
		_ = syscall.Kill(s.master.pid(), syscall.SIGUSR2)
		run.Profile = runEnv.profile
	}
	if err != nil {
		return fail(err)
	}
	run.fill(res, diffSnapshots(before, after), s.master != nil)
	run.fillPerf(counted)
	if len(after.served) < s.workers {
		run.Error = fmt.Sprintf("%d of %d workers answered the stats query after the run", len(after.served), s.workers)
	}
	return run, nil
}

// startPerf records the server's processes with perf while the measured
// run lasts, if -perf; the returned function stops it.
func startPerf(c *config, s *server, snap snapshot, tag string) func() {
	if !c.perf {
		return func() {}
	}
	var pids []string
	if s.master != nil {
		pids = append(pids, fmt.Sprint(s.master.pid()))
	}
	for _, pid := range snap.workerPIDs() {
		pids = append(pids, fmt.Sprint(pid))
	}
	out := filepath.Join(c.out, "perf", tag+".data")
	cmd := exec.Command("perf", "record", "-q", "-g", "-F", "999", "-o", out, "-p", strings.Join(pids, ","))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "\nhandoff-bench: perf: %v\n", err)
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}
