//go:build linux

package ipc_test

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"unsafe"

	"github.com/handoff-go/handoff/internal/proctest"
	"github.com/handoff-go/handoff/ipc"
	"golang.org/x/sys/unix"
)

// The values the child of TestPageShared stores, and the one it must see
// that the parent stored before it started.
const (
	pageReceived = 1<<40 + 3
	pageClosed   = 5
	pageLimit    = 1000 // the fd limit whose FrameFDs the child stores
)

// TestPageShared writes the counter page from a child process that maps
// it from fd PageFD, as a worker does, and reads what it wrote through
// the master's own mapping.
func TestPageShared(t *testing.T) {
	if proctest.ChildMode() == "page" {
		pageChild(t)
		return
	}
	t.Parallel()
	p, f, err := ipc.NewPage()
	if err != nil {
		t.Fatalf("NewPage: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	c := p.Counters()
	if c.Received.Load() != 0 || c.Closed.Load() != 0 || c.FrameFDs.Load() != 0 || c.NoRoom.Load() != 0 {
		t.Fatal("a new page is not all zero")
	}
	c.Closed.Store(pageClosed)
	// Nothing on fd 3: the page alone, on fd PageFD.
	_, wait, _ := proctest.StartChild(t, "TestPageShared", "page", []*os.File{nil, f},
		fmt.Sprintf("%s=%d", ipc.EnvPageFD, ipc.PageFD))
	wait()
	if got := c.Received.Load(); got != pageReceived {
		t.Errorf("Received = %d, want %d, stored by the child", got, uint64(pageReceived))
	}
	if got := c.Closed.Load(); got != pageClosed+2 {
		t.Errorf("Closed = %d, want %d: the parent's %d plus the child's 2", got, pageClosed+2, pageClosed)
	}
	if got, want := c.FrameFDs.Load(), uint32(ipc.FrameFDs(pageLimit)); got != want {
		t.Errorf("FrameFDs = %d, want %d", got, want)
	}
	if got := c.NoRoom.Load(); got != 1 {
		t.Errorf("NoRoom = %d, want 1", got)
	}
}

func pageChild(t *testing.T) {
	p, err := ipc.InheritedPage()
	if err != nil {
		t.Fatalf("InheritedPage: %v", err)
	}
	// The mapping stays for the life of the process; the fd does not.
	if _, err := unix.FcntlInt(ipc.PageFD, unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
		t.Errorf("fd %d after InheritedPage: %v, want it closed", ipc.PageFD, err)
	}
	c := p.Counters()
	if got := c.Closed.Load(); got != pageClosed {
		t.Fatalf("Closed = %d in the child, want %d, stored by the parent", got, pageClosed)
	}
	c.Received.Store(pageReceived)
	c.Closed.Add(2)
	c.FrameFDs.Store(uint32(ipc.FrameFDs(pageLimit)))
	c.NoRoom.Store(1)
}

// TestInheritedPageRejects runs InheritedPage in child processes whose fd
// PageFD is not a counter page: it fails, and closes an fd it rejects.
func TestInheritedPageRejects(t *testing.T) {
	if mode := proctest.ChildMode(); strings.HasPrefix(mode, "page-reject-") {
		p, err := ipc.InheritedPage()
		if err == nil {
			_ = p.Close()
			t.Fatalf("%s: InheritedPage succeeded", mode)
		}
		if _, err := unix.FcntlInt(ipc.PageFD, unix.F_GETFD, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("%s: fd %d after a failed InheritedPage: %v, want it closed", mode, ipc.PageFD, err)
		}
		return
	}
	t.Parallel()
	tests := []struct {
		name string
		file func(t *testing.T) *os.File // becomes the child's fd PageFD
	}{
		{name: "short file", file: func(t *testing.T) *os.File {
			f, err := os.Create(t.TempDir() + "/short")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteString("not a page"); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{name: "pipe", file: func(t *testing.T) *os.File {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			return r
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			// Nothing on fd 3. A test of no fd PageFD at all would not be
			// sound: the child's runtime may open fds of its own there.
			files := []*os.File{nil, tt.file(t)}
			_, wait, _ := proctest.StartChild(t, "TestInheritedPageRejects", "page-reject-"+strings.ReplaceAll(tt.name, " ", "-"), files)
			wait()
		})
	}
}

// mappedAt returns the line of /proc/self/maps whose range holds addr, or
// "" if none does.
func mappedAt(t *testing.T, addr uintptr) string {
	t.Helper()
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var lo, hi uintptr
		if _, err := fmt.Sscanf(s.Text(), "%x-%x", &lo, &hi); err != nil {
			t.Fatalf("maps line %q: %v", s.Text(), err)
		}
		if lo <= addr && addr < hi {
			return s.Text()
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return ""
}

// TestPageClose: the page is a shared mapping of its memfd until Close
// unmaps it; Close is idempotent; the file is a page long and
// close-on-exec, so only a worker that is handed it gets it.
func TestPageClose(t *testing.T) {
	t.Parallel()
	p, f, err := ipc.NewPage()
	if err != nil {
		t.Fatalf("NewPage: %v", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 4096 {
		t.Errorf("page file: %d bytes, want 4096", st.Size())
	}
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var flags int
	var ferr error
	if err := rc.Control(func(fd uintptr) { flags, ferr = unix.FcntlInt(fd, unix.F_GETFD, 0) }); err != nil || ferr != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Errorf("page file: flags %#x, %v %v; want close-on-exec", flags, err, ferr)
	}
	addr := uintptr(unsafe.Pointer(p.Counters()))
	if line := mappedAt(t, addr); !strings.Contains(line, "handoff-counters") || !strings.Contains(line, "rw-s") {
		t.Fatalf("counters at %#x are in %q, want a shared read-write mapping of the memfd", addr, line)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if line := mappedAt(t, addr); strings.Contains(line, "handoff-counters") {
		t.Errorf("after Close, %#x is still in %q", addr, line)
	}
	if p.Counters() != nil {
		t.Error("Counters after Close is not nil")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCountersLayout pins where each counter sits in the page: master and
// worker may be different builds, and the layout is their protocol.
func TestCountersLayout(t *testing.T) {
	t.Parallel()
	var c ipc.Counters
	for _, tt := range []struct {
		name      string
		got, want uintptr
	}{
		{name: "Received", got: unsafe.Offsetof(c.Received), want: 0},
		{name: "Closed", got: unsafe.Offsetof(c.Closed), want: 8},
		{name: "FrameFDs", got: unsafe.Offsetof(c.FrameFDs), want: 16},
		{name: "NoRoom", got: unsafe.Offsetof(c.NoRoom), want: 20},
		{name: "Readers", got: unsafe.Offsetof(c.Readers), want: 24},
		{name: "Busy", got: unsafe.Offsetof(c.Busy), want: 28},
		{name: "Serving", got: unsafe.Offsetof(c.Serving), want: 32},
		{name: "Idle", got: unsafe.Offsetof(c.Idle), want: 36},
		{name: "size", got: unsafe.Sizeof(c), want: 40},
	} {
		if tt.got != tt.want {
			t.Errorf("%s at %d, want %d", tt.name, tt.got, tt.want)
		}
	}
}

func TestFrameFDs(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		limit uint64
		want  int
	}{
		{name: "zero", limit: 0, want: 1},
		{name: "under 8", limit: 7, want: 1},
		{name: "8", limit: 8, want: 1},
		{name: "16", limit: 16, want: 2},
		{name: "1024", limit: 1024, want: 128},
		{name: "just under MaxConns", limit: 8*ipc.MaxConns - 1, want: ipc.MaxConns - 1},
		{name: "MaxConns", limit: 8 * ipc.MaxConns, want: ipc.MaxConns},
		{name: "above", limit: 8*ipc.MaxConns + 8, want: ipc.MaxConns},
		{name: "huge", limit: 1 << 62, want: ipc.MaxConns},
		{name: "max", limit: ^uint64(0), want: ipc.MaxConns},
	}
	for _, tt := range tests {
		if got := ipc.FrameFDs(tt.limit); got != tt.want {
			t.Errorf("%s: FrameFDs(%d) = %d, want %d", tt.name, tt.limit, got, tt.want)
		}
	}
}
