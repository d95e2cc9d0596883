//go:build linux

package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// Sizes and bounds of the ServeFile case.
const (
	fileSize = 128 << 20 // the file served
	// With sendfile, Go sends a file in calls of up to 4 MiB, and
	// more when the socket is full and the poller waits: a few dozen,
	// a few hundred on a busy machine. Through user space, each
	// write(2) carries at most 32 KiB: 4096 for this file.
	sendfileMaxWrites = fileSize / (256 << 10)
	copyMinWrites     = fileSize / (64 << 10)
	slowRate          = 64 << 20 // bytes/s read by the downloads held across the restart
	slowWarm          = 8 << 20  // bytes each slow download has read before the SIGHUP
	maxFastDownloads  = 20       // full-speed downloads during the restart, at most
)

// writeRandomFile writes size pseudo-random bytes to path and returns
// their SHA-256.
func writeRandomFile(t *testing.T, path string, size int) [sha256.Size]byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	src := rand.NewChaCha8([32]byte{'h', 'a', 'n', 'd', 'o', 'f', 'f'})
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= len(buf) {
		b := buf[:min(len(buf), left)]
		_, _ = src.Read(b)
		h.Write(b)
		if _, err := f.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return [sha256.Size]byte(h.Sum(nil))
}

// download is one GET of the file, as the client saw it.
type download struct {
	pid  int               // the worker that answered
	n    int64             // bytes of body
	sum  [sha256.Size]byte // their SHA-256
	took time.Duration
}

// fetch downloads url, reading at most rate bytes/s (0: no limit), and
// adds the bytes read to read (nil: none).
func fetch(c *http.Client, url string, rate int64, read *atomic.Int64) (download, error) {
	start := time.Now()
	resp, err := c.Get(url)
	if err != nil {
		return download{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return download{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	d := download{}
	if d.pid, err = strconv.Atoi(resp.Header.Get(headerPID)); err != nil {
		return download{}, err
	}
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for {
		k, err := resp.Body.Read(buf)
		h.Write(buf[:k])
		d.n += int64(k)
		if read != nil {
			read.Add(int64(k))
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return download{}, fmt.Errorf("GET %s: after %d bytes: %w", url, d.n, err)
		}
		if rate > 0 {
			if ahead := time.Duration(d.n*int64(time.Second)/rate) - time.Since(start); ahead > 0 {
				time.Sleep(ahead)
			}
		}
	}
	d.sum = [sha256.Size]byte(h.Sum(nil))
	d.took = time.Since(start)
	return d, nil
}

// checkBody checks that d is the whole file.
func checkBody(d download, want [sha256.Size]byte) error {
	if d.n != fileSize || !bytes.Equal(d.sum[:], want[:]) {
		return fmt.Errorf("worker %d sent %d bytes with SHA-256 %x, want %d bytes with %x", d.pid, d.n, d.sum[:6], fileSize, want[:6])
	}
	return nil
}

// measured downloads url alone and returns the download and the write
// syscalls the worker that answered made meanwhile, read from outside
// in /proc/PID/io.
func measured(t *testing.T, m *master, c *http.Client, url string, want [sha256.Size]byte) (download, int64) {
	t.Helper()
	before := make(map[int]int64)
	for _, pid := range m.pids() {
		n, err := ioSyscw(pid)
		if err != nil {
			t.Fatal(err)
		}
		before[pid] = n
	}
	d, err := fetch(c, url, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	after, err := ioSyscw(d.pid)
	if err != nil {
		t.Fatal(err)
	}
	b, ok := before[d.pid]
	if !ok {
		t.Fatalf("answered by worker %d, not one of %v", d.pid, m.pids())
	}
	if err := checkBody(d, want); err != nil {
		t.Error(err)
	}
	return d, after - b
}

// TestServeFileSendfile: http.ServeFile of a 128 MiB file, sent with
// sendfile(2) through the handed-off connection, as /proc/PID/io shows
// from outside (with /copy/, the same file through user space, as the
// control that the count tells the two apart); downloads held open
// across a rolling restart finish whole.
func TestServeFileSendfile(t *testing.T) {
	dir := t.TempDir()
	sum := writeRandomFile(t, filepath.Join(dir, "big.bin"), fileSize)
	m := startMaster(t, "--http", "127.0.0.1:0", "--dir", dir)
	tr := &http.Transport{DisableKeepAlives: true} // a connection per download, placed by the master
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr, Timeout: time.Minute}
	base := "http://" + m.addr

	type result struct {
		what   string
		d      download
		syscw  int64
		copied bool
	}
	var results []result
	d, n := measured(t, m, c, base+"/file/big.bin", sum)
	results = append(results, result{"sendfile, before the restart", d, n, false})
	d, n = measured(t, m, c, base+"/copy/big.bin", sum)
	results = append(results, result{"user-space copy (control), before the restart", d, n, true})

	var slow, fast tally
	var slowRead [2]atomic.Int64
	var slowDone atomic.Int64
	r := acrossRestartUntil(t, m,
		func() bool { return slowRead[0].Load() >= slowWarm && slowRead[1].Load() >= slowWarm },
		func(restartResult) bool { return slowDone.Load() == 2 && fast.ok.Load()+fast.failed.Load() >= 2 },
		func(stop <-chan struct{}, g *errgroup.Group) {
			for i := range slowRead {
				g.Go(func() error {
					defer slowDone.Add(1)
					d, err := fetch(c, base+"/file/big.bin", slowRate, &slowRead[i])
					if err == nil {
						err = checkBody(d, sum)
					}
					slow.add(d.pid, err)
					return nil
				})
			}
			load(g, 1, maxFastDownloads, stop, &fast, func(int, int64) (int, error) {
				d, err := fetch(c, base+"/file/big.bin", 0, nil)
				if err == nil {
					err = checkBody(d, sum)
				}
				return d.pid, err
			})
		})
	if n := slow.failed.Load(); n > 0 {
		t.Errorf("downloads held across the restart: %d failed: %v", n, slow.errs)
	}
	if n := slow.servedBy(r.old); n != 2 {
		t.Errorf("the old workers %v answered %d of the 2 slow downloads", r.old, n)
	}
	if n := fast.failed.Load(); n > 0 {
		t.Errorf("full-speed downloads during the restart: %d failed: %v", n, fast.errs)
	}

	d, n = measured(t, m, c, base+"/file/big.bin", sum)
	if !slices.Contains(r.new, d.pid) {
		t.Errorf("the download after the restart was answered by worker %d, not one of the new %v", d.pid, r.new)
	}
	results = append(results, result{"sendfile, after the restart", d, n, false})

	for _, res := range results {
		t.Logf("servefile: %s: worker %d, %d MiB in %v, %d write syscalls", res.what, res.d.pid, res.d.n>>20, res.d.took.Round(time.Millisecond), res.syscw)
		switch {
		case !res.copied && res.syscw >= sendfileMaxWrites:
			t.Errorf("%s: %d write syscalls for %d MiB, want fewer than %d: not sendfile", res.what, res.syscw, fileSize>>20, sendfileMaxWrites)
		case res.copied && res.syscw < copyMinWrites:
			t.Errorf("%s: %d write syscalls for %d MiB, want at least %d: the count does not tell sendfile from a copy", res.what, res.syscw, fileSize>>20, copyMinWrites)
		}
	}
	t.Logf("servefile: %d slow downloads (%d MiB/s) across the restart: %d ok, %d failed; full-speed downloads during it: %s; %v",
		len(slowRead), slowRate>>20, slow.ok.Load(), slow.failed.Load(), fast.figures(r), r)
}
