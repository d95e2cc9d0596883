//go:build linux

package scm

import (
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// CloseFDs closes every fd in fds, which the caller owns, in as few
// syscalls as it can: it sorts fds in place and closes each run of
// consecutive numbers with one close_range(2). A batch accepted in one
// go is usually a single run, so a whole batch costs one syscall. Where
// close_range is missing (Linux before 5.9), each fd is closed alone.
func CloseFDs(fds []int) {
	switch len(fds) {
	case 0:
		return
	case 1:
		rawClose(fds[0])
		return
	}
	slices.Sort(fds)
	lo := 0
	for i := 1; i <= len(fds); i++ {
		if i < len(fds) && fds[i] == fds[i-1]+1 {
			continue
		}
		closeRun(fds[lo], fds[i-1])
		lo = i
	}
}

// closeRun closes the fds lo..hi, every one of which the caller owns.
// The syscalls are raw: closing a socket that is not the last reference,
// or has no linger set, does not block, and entersyscall would wake the
// runtime's sysmon thread.
func closeRun(lo, hi int) {
	if lo == hi {
		rawClose(lo)
		return
	}
	if _, _, e := unix.RawSyscall(unix.SYS_CLOSE_RANGE, uintptr(lo), uintptr(hi), 0); e == 0 {
		return
	}
	for fd := lo; fd <= hi; fd++ {
		rawClose(fd)
	}
}

func rawClose(fd int) { _, _, _ = unix.RawSyscall(unix.SYS_CLOSE, uintptr(fd), 0, 0) }

// Room tells a reader of fds whether this process has room for n more fds
// before it reads a message that may carry n of them. A message read
// without room is truncated by the kernel (MSG_CTRUNC) and the fds that
// did not fit are closed: connections lost for good. So a reader asks
// first, and leaves the message in the socket when there is no room.
//
// Counting open fds means reading /proc/self/fd, which costs a few
// syscalls, so Room counts exactly only when it must: while the last count
// left more than roomSlack spare fds beyond what was taken since, it
// answers from memory, and it counts again at least every roomRecount.
// Fds the program opens meanwhile on its own are covered by that slack.
// Its methods are safe for concurrent use; the zero value is ready.
type Room struct {
	mu      sync.Mutex // guards free and counted
	free    int        // spare fds at the last count, minus those taken since
	counted time.Time  // when free was last counted; zero: never
}

// Slack and recount period of Room; see Room.
const (
	roomSlack   = 256
	roomRecount = time.Second
)

// For reports whether n more fds fit, counting exactly if it must.
func (r *Room) For(n int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.counted.IsZero() && r.free-n >= roomSlack && time.Since(r.counted) < roomRecount {
		return true
	}
	free, err := FreeFDs()
	if err != nil {
		// Cannot even open /proc/self/fd: no room.
		r.counted = time.Time{}
		return false
	}
	r.free, r.counted = free, time.Now()
	return free >= n+1 // and one to spare for the next count
}

// Spare returns how many more fds may be taken while keeping reserve
// free, counting exactly if it must (as For does). A caller that takes
// several fds in a row asks once and counts down, rather than asking
// before each.
func (r *Room) Spare(reserve int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.counted.IsZero() && r.free-reserve >= roomSlack && time.Since(r.counted) < roomRecount {
		return r.free - reserve
	}
	free, err := FreeFDs()
	if err != nil {
		r.counted = time.Time{}
		return 0
	}
	r.free, r.counted = free, time.Now()
	return max(free-reserve-1, 0)
}

// Took records that n fds arrived since the last count.
func (r *Room) Took(n int) {
	r.mu.Lock()
	r.free -= n
	r.mu.Unlock()
}

// FreeFDs returns how many more fds this process may open: its
// RLIMIT_NOFILE soft limit minus the fds open now.
func FreeFDs() (int, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, os.NewSyscallError("getrlimit", err)
	}
	n, err := OpenFDs()
	if err != nil {
		return 0, err
	}
	return int(min(lim.Cur, 1<<30)) - n, nil
}

// OpenFDs counts this process's open fds, not counting the one it uses
// to read /proc/self/fd.
func OpenFDs() (int, error) {
	fd, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, os.NewSyscallError("open", err)
	}
	defer unix.Close(fd)
	var buf [8192]byte
	n := 0
	for {
		k, err := unix.ReadDirent(fd, buf[:])
		if err != nil {
			return 0, os.NewSyscallError("getdents64", err)
		}
		if k == 0 {
			break
		}
		for b := buf[:k]; len(b) > 0; {
			// struct linux_dirent64: ino u64, off u64, reclen u16, type u8, name.
			reclen := int(b[16]) | int(b[17])<<8
			if reclen == 0 || reclen > len(b) {
				break
			}
			if name := b[19:reclen]; name[0] != '.' {
				n++
			}
			b = b[reclen:]
		}
	}
	return n - 1, nil
}
