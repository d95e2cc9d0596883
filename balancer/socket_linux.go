//go:build linux

package balancer

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// Listen opens a listening socket as Balancer.Listen does, without
// accepting on it. The network must be one that masters hand off
// (ipc.CheckNetwork). Its errors are *net.OpError, as net.Listen's.
//
// A Unix socket's path that holds a socket nobody listens on, left by a
// master that was killed, is removed first; a live socket there is an
// EADDRINUSE that names the process holding it, when it can be found;
// a path that is not a socket is never removed. The new socket then gets
// UnixMode and UnixGroup.
func (o SocketOptions) Listen(network, address string) (net.Listener, error) {
	if err := ipc.CheckNetwork(network); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	if err := o.validate(); err != nil {
		return nil, &net.OpError{Op: "listen", Net: network, Err: err}
	}
	gid := -1
	if network == "unix" && o.UnixGroup != "" {
		var err error
		if gid, err = LookupGroup(o.UnixGroup); err != nil {
			return nil, &net.OpError{Op: "listen", Net: network, Addr: &net.UnixAddr{Name: address, Net: network}, Err: err}
		}
	}
	if network == "unix" {
		if err := removeStaleSocket(address); err != nil {
			return nil, &net.OpError{Op: "listen", Net: network, Addr: &net.UnixAddr{Name: address, Net: network}, Err: err}
		}
	}
	ln, err := net.Listen(network, address)
	if err != nil {
		return nil, err
	}
	fail := func(err error) (net.Listener, error) {
		_ = ln.Close() // removes a Unix socket's path
		return nil, &net.OpError{Op: "listen", Net: network, Addr: ln.Addr(), Err: err}
	}
	if o.Backlog > 0 {
		// listen(2) again on a listening socket sets its backlog anew.
		if err := control(ln, func(fd int) error { return os.NewSyscallError("listen", unix.Listen(fd, o.Backlog)) }); err != nil {
			return fail(err)
		}
	}
	if _, ok := ln.(*net.UnixListener); ok && !abstract(address) {
		mode := o.UnixMode
		if mode == 0 {
			mode = DefaultUnixMode
		}
		if gid >= 0 {
			if err := os.Lchown(address, -1, gid); err != nil {
				return fail(err)
			}
		}
		if err := os.Chmod(address, mode); err != nil {
			return fail(err)
		}
	}
	return ln, nil
}

// control runs f on ln's socket.
func control(ln net.Listener, f func(fd int) error) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return fmt.Errorf("balancer: no socket in a %T", ln)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := rc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// abstract reports whether a Unix address is in the abstract namespace,
// which has no file.
func abstract(address string) bool {
	return strings.HasPrefix(address, "@") || strings.HasPrefix(address, "\x00")
}

// staleDialTimeout bounds the connect that tells a live socket from a
// stale one.
const staleDialTimeout = time.Second

// removeStaleSocket removes path if it is a socket that nobody listens on
// (connect gets ECONNREFUSED), as a master killed by SIGKILL leaves it.
// A live one is EADDRINUSE, naming its holder if it can; a file that is
// not a socket is left alone, with an error that says so.
func removeStaleSocket(path string) error {
	if abstract(path) {
		return nil
	}
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket (%s); it is not removed: %w", path, fi.Mode().Type(), os.NewSyscallError("bind", syscall.EADDRINUSE))
	}
	c, err := net.DialTimeout("unix", path, staleDialTimeout)
	switch {
	case err == nil:
		_ = c.Close()
		return fmt.Errorf("a live listener holds %s%s: %w", path, socketHolder(path), os.NewSyscallError("bind", syscall.EADDRINUSE))
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("removing the stale socket %s: %w", path, err)
		}
		return nil
	default:
		return nil // bind reports what is wrong (EACCES, a full backlog)
	}
}

// socketHolder says which process listens on the Unix socket at path, as
// " (pid N, NAME)", or "" if it cannot tell (another user's process, or
// another network namespace).
func socketHolder(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ""
	}
	inode := listeningInode(abs)
	if inode == "" {
		return ""
	}
	want := "socket:[" + inode + "]"
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			if link, _ := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); link == want {
				comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
				return fmt.Sprintf(" (pid %d, %s)", pid, strings.TrimSpace(string(comm)))
			}
		}
	}
	return ""
}

// soAcceptCon is the kernel's __SO_ACCEPTCON flag of a listening socket in
// /proc/net/unix.
const soAcceptCon = 1 << 16

// listeningInode finds the inode of the listening Unix socket bound to
// path in /proc/net/unix.
func listeningInode(path string) string {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fields := strings.Fields(s.Text())
		if len(fields) < 8 || fields[7] != path {
			continue
		}
		flags, err := strconv.ParseUint(fields[3], 16, 32)
		if err == nil && flags&soAcceptCon != 0 {
			return fields[6]
		}
	}
	return ""
}
