//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat:
// 100 on every Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// readCPU returns the user+system CPU time (utime+stime of
// /proc/PID/stat) process pid has used, 0 if it is gone.
func readCPU(procFS procfs.FS, pid int) time.Duration {
	p, err := procFS.Proc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return time.Duration(st.UTime+st.STime) * clockTick
}

// readCtxSwitches sums the voluntary and involuntary context switches of
// every thread of pid (/proc/PID/task/TID/status: /proc/PID/status has
// only the main thread's); a thread that exited is no longer counted,
// which Go runtimes rarely do. 0 if pid is gone.
func readCtxSwitches(procFS procfs.FS, pid int) uint64 {
	threads, err := procFS.AllThreads(pid)
	if err != nil {
		return 0
	}
	var n uint64
	for _, t := range threads {
		st, err := t.NewStatus()
		if err != nil {
			continue
		}
		n += st.VoluntaryCtxtSwitches + st.NonVoluntaryCtxtSwitches
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
// every process from procFS. Workers that do not answer (dead) are left out.
func takeSnapshot(ctx context.Context, procFS procfs.FS, s *server) snapshot {
	snap := snapshot{at: time.Now(), served: map[int]uint64{}, workerCPU: map[int]time.Duration{}, workerCS: map[int]uint64{}}
	socks, _ := filepath.Glob(filepath.Join(s.statsDir, "*.sock"))
	for _, sock := range socks {
		pid, served, err := queryStats(ctx, sock)
		if err != nil {
			continue
		}
		snap.served[pid] = served
		snap.workerCPU[pid] = readCPU(procFS, pid)
		snap.workerCS[pid] = readCtxSwitches(procFS, pid)
	}
	if s.master != nil {
		snap.masterCPU = readCPU(procFS, s.master.pid())
		snap.masterCS = readCtxSwitches(procFS, s.master.pid())
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
