//go:build linux

package fdtest

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Pipe is a non-blocking pipe whose ends the test owns until it closes
// them through CloseR and CloseW, so that cleanup never closes a number
// twice. Its write end is the fd that tests send: once every copy of it
// is closed, the empty pipe reads EOF instead of EAGAIN, which proves
// that the fds were closed (fcntl on a closed number is unreliable once
// the number is reused).
type Pipe struct {
	R int // the read end, or -1 once closed
	W int // the write end, or -1 once closed
}

// NewPipe opens a Pipe, both ends close-on-exec and non-blocking.
// Cleanup closes the ends still open.
func NewPipe(tb testing.TB) *Pipe {
	tb.Helper()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		tb.Fatalf("pipe2: %v", err)
	}
	tp := &Pipe{R: p[0], W: p[1]}
	tb.Cleanup(func() { tp.CloseR(); tp.CloseW() })
	return tp
}

// CloseR closes the read end, if it is open.
func (p *Pipe) CloseR() {
	if p.R >= 0 {
		_ = unix.Close(p.R)
		p.R = -1
	}
}

// CloseW closes the write end, if it is open.
func (p *Pipe) CloseW() {
	if p.W >= 0 {
		_ = unix.Close(p.W)
		p.W = -1
	}
}

// HasWriters reports whether a copy of the write end is still open, in
// this process or in flight. The pipe must be empty.
func (p *Pipe) HasWriters() bool {
	var b [1]byte
	_, err := unix.Read(p.R, b[:])
	return errors.Is(err, unix.EAGAIN)
}

// writerGrace bounds how long AssertNoWriters waits for a copy of the
// write end that is only passing through: a child that a parallel test
// forks holds a copy of every fd of the process until it execs, and
// close-on-exec closes them there. A leaked fd stays.
const writerGrace = 2 * time.Second

// AssertNoWriters checks that every copy of the write end was closed,
// here and in flight: the empty pipe then reads EOF rather than EAGAIN.
func (p *Pipe) AssertNoWriters(tb testing.TB) {
	tb.Helper()
	var b [1]byte
	deadline := time.Now().Add(writerGrace)
	for {
		n, err := unix.Read(p.R, b[:])
		switch {
		case err == nil && n == 0:
			return
		case errors.Is(err, unix.EAGAIN) && time.Now().Before(deadline):
			time.Sleep(time.Millisecond)
		case errors.Is(err, unix.EAGAIN):
			tb.Errorf("pipe still has a writer %s after its last close: an fd was leaked", writerGrace)
			return
		default:
			tb.Errorf("read pipe: n=%d err=%v", n, err)
			return
		}
	}
}

// AssertReadsByte checks that the pipe holds exactly the one byte b: it
// was written through an fd that the test received for the pipe. what
// names that fd in the error.
func (p *Pipe) AssertReadsByte(tb testing.TB, b byte, what string) {
	tb.Helper()
	var got [2]byte
	if n, err := unix.Read(p.R, got[:]); n != 1 || err != nil || got[0] != b {
		tb.Errorf("%s: pipe read n=%d b=%d err=%v, want the byte %d written through its fd", what, n, got[0], err, b)
	}
}

// Repeat returns n copies of fd, for sending one fd n times.
func Repeat(fd, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd
	}
	return fds
}

// Close closes every fd of fds, ignoring errors.
func Close(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// AssertCloexec checks that fd, one the test received, is close-on-exec.
func AssertCloexec(tb testing.TB, fd int) {
	tb.Helper()
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		tb.Errorf("fd %d: flags %#x err %v, want close-on-exec", fd, flags, err)
	}
}

// Count counts this process's open fds in /proc/self/fd. The fd that
// reads the directory is counted, in every call alike.
func Count(tb testing.TB) int {
	tb.Helper()
	return countIn(tb, "/proc/self/fd")
}

// CountOf counts the open fds of process pid, in /proc/PID/fd.
func CountOf(tb testing.TB, pid int) int {
	tb.Helper()
	return countIn(tb, fmt.Sprintf("/proc/%d/fd", pid))
}

func countIn(tb testing.TB, dir string) int {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		tb.Fatalf("read %s: %v", dir, err)
	}
	return len(ents)
}

// Open returns the numbers of this process's open fds, from
// /proc/self/fd, and the lowest number that is not open.
func Open(tb testing.TB) (open map[int]bool, lowestFree int) {
	tb.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatalf("read /proc/self/fd: %v", err)
	}
	open = map[int]bool{}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			tb.Fatalf("/proc/self/fd entry %q: %v", e.Name(), err)
		}
		open[fd] = true
	}
	for open[lowestFree] {
		lowestFree++
	}
	return open, lowestFree
}

// AtLimit runs fn with the soft RLIMIT_NOFILE lowered to the limit that
// leaves free numbers below it unused (one more if the fd that read
// /proc/self/fd, closed again, was below it), and then restores the
// limit. The limit is on fd numbers, and this process may have inherited
// fds with high numbers, so it is picked from the numbers open now. fn
// runs on the test goroutine; it should only record what it sees.
func AtLimit(tb testing.TB, free int, fn func()) {
	tb.Helper()
	open, _ := Open(tb)
	limit, n := 0, 0
	for ; n < free; limit++ {
		if !open[limit] {
			n++
		}
	}
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		tb.Fatal(err)
	}
	low := old
	low.Cur = uint64(limit)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &low); err != nil {
		tb.Fatal(err)
	}
	defer func() {
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
			tb.Fatal(err)
		}
	}()
	fn()
}

// CheckAtCleanup records the open fd count now and checks, when tb's
// cleanup runs, that it is the same again.
func CheckAtCleanup(tb testing.TB) {
	tb.Helper()
	before := Count(tb)
	tb.Cleanup(func() {
		if after := Count(tb); after != before {
			tb.Errorf("open fds: %d before, %d after", before, after)
		}
	})
}

// Steady calls fn(0) once, to let the runtime open what it opens lazily,
// and then fn(i) for each i from 0 to n-1, and checks that those n calls
// left the open fd count as it was.
func Steady(tb testing.TB, n int, fn func(i int)) {
	tb.Helper()
	fn(0)
	before := Count(tb)
	for i := range n {
		fn(i)
	}
	if after := Count(tb); after != before {
		tb.Errorf("open fds: %d before, %d after %d rounds", before, after, n)
	}
}
