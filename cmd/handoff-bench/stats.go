package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// procCPU parses the user+system CPU time out of a /proc/PID/stat line.
// The command name, field 2, is in parentheses and may hold spaces and
// parentheses itself, so fields are counted after its last ')'.
func procCPU(stat []byte) (time.Duration, error) {
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("stat: no command name")
	}
	// After ") ": state is field 3, utime field 14, stime field 15.
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after the command name, want 13 or more", len(f))
	}
	utime, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: utime: %w", err)
	}
	stime, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: stime: %w", err)
	}
	return time.Duration(utime+stime) * clockTick, nil
}

// readCPU returns the CPU time process pid has used, 0 if it is gone.
func readCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	d, err := procCPU(b)
	if err != nil {
		return 0
	}
	return d
}

// ctxSwitches parses voluntary plus involuntary context switches out of
// a /proc/PID/task/TID/status file.
func ctxSwitches(status []byte) (uint64, error) {
	var n uint64
	found := 0
	for _, line := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "voluntary_ctxt_switches" && k != "nonvoluntary_ctxt_switches") {
			continue
		}
		c, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("status: %s: %w", k, err)
		}
		n += c
		found++
	}
	if found != 2 {
		return 0, errors.New("status: no context switch counts")
	}
	return n, nil
}

// readCtxSwitches sums the context switches of every thread of pid; a
// thread that exited is no longer counted, which Go runtimes rarely do.
func readCtxSwitches(pid int) uint64 {
	tasks, _ := filepath.Glob("/proc/" + strconv.Itoa(pid) + "/task/*/status")
	var n uint64
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		if c, err := ctxSwitches(b); err == nil {
			n += c
		}
	}
	return n
}

// parseStatsReply parses a worker's "PID REQUESTS\n".
func parseStatsReply(b []byte) (pid int, served uint64, err error) {
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("stats reply %q: want \"PID REQUESTS\"", b)
	}
	if pid, err = strconv.Atoi(f[0]); err != nil || pid <= 0 {
		return 0, 0, fmt.Errorf("stats reply %q: bad pid", b)
	}
	if served, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return 0, 0, fmt.Errorf("stats reply %q: bad count", b)
	}
	return pid, served, nil
}

// snapshot is one moment of a server: each worker's requests served and
// CPU, and the master's CPU.
type snapshot struct {
	at        time.Time
	served    map[int]uint64        // by worker pid
	workerCPU map[int]time.Duration // by worker pid
	workerCS  map[int]uint64        // context switches, by worker pid
	masterCPU time.Duration
	masterCS  uint64
}

// takeSnapshot asks every worker of s for its count and reads the CPU of
// every process. Workers that do not answer (dead) are left out.
func takeSnapshot(ctx context.Context, s *server) snapshot {
	snap := snapshot{at: time.Now(), served: map[int]uint64{}, workerCPU: map[int]time.Duration{}, workerCS: map[int]uint64{}}
	socks, _ := filepath.Glob(filepath.Join(s.statsDir, "*.sock"))
	for _, sock := range socks {
		pid, served, err := queryStats(ctx, sock)
		if err != nil {
			continue
		}
		snap.served[pid] = served
		snap.workerCPU[pid] = readCPU(pid)
		snap.workerCS[pid] = readCtxSwitches(pid)
	}
	if s.master != nil {
		snap.masterCPU = readCPU(s.master.pid())
		snap.masterCS = readCtxSwitches(s.master.pid())
	}
	return snap
}

// workerPIDs are the workers that answered, in increasing order: the
// processes whose CPU the snapshot read.
func (s snapshot) workerPIDs() []int {
	pids := slices.Collect(maps.Keys(s.served))
	slices.Sort(pids)
	return pids
}

// queryStats asks one stats socket.
func queryStats(ctx context.Context, sock string) (int, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://stats/", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return 0, 0, err
	}
	return parseStatsReply(b)
}

// usage is what a server did between two snapshots.
type usage struct {
	served    map[int]uint64 // requests per worker pid
	total     uint64
	masterCPU time.Duration
	workerCPU time.Duration
	masterCS  uint64 // context switches
	workerCS  uint64
}

// diffSnapshots subtracts before from after. A worker that appeared in
// between (a restart) counts from zero.
func diffSnapshots(before, after snapshot) usage {
	u := usage{served: map[int]uint64{}, masterCPU: max(after.masterCPU-before.masterCPU, 0),
		masterCS: after.masterCS - min(before.masterCS, after.masterCS)}
	for pid, n := range after.served {
		d := n - min(before.served[pid], n)
		u.served[pid] = d
		u.total += d
		u.workerCPU += max(after.workerCPU[pid]-before.workerCPU[pid], 0)
		u.workerCS += after.workerCS[pid] - min(before.workerCS[pid], after.workerCS[pid])
	}
	return u
}

// split returns the busiest and idlest workers' request counts.
func (u usage) split() (most, least uint64) {
	first := true
	for _, n := range u.served {
		if first {
			most, least, first = n, n, false
			continue
		}
		most, least = max(most, n), min(least, n)
	}
	return most, least
}
