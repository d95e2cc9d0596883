//go:build linux

package ipc

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Page is a worker's counter page: one page of shared memory (memfd_create
// and mmap) that the worker writes with atomic stores and the master reads
// with atomic loads when it picks a worker. It replaces acks and close
// reports: no frame, no syscall and no wakeup per connection. The master
// makes it and passes it to the worker as fd PageFD.
//
// Everything in it is written by the worker and is untrusted: a worker can
// only lie about itself, and the master clamps what it reads. Its layout
// is part of the protocol, as Version is: a field is added only at the end.
type Page struct {
	mem []byte    // the shared mapping, pageSize bytes
	c   *Counters // the counters, laid over mem
}

// pageSize is the size of the shared mapping.
const pageSize = 4096

// NewPage makes a counter page in the master. It returns the page and the
// file to pass to the worker as fd PageFD; the caller closes the file once
// the worker has started, and the page once the worker is gone.
func NewPage() (*Page, *os.File, error) {
	fd, err := unix.MemfdCreate("handoff-counters", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, nil, os.NewSyscallError("memfd_create", err)
	}
	if err := unix.Ftruncate(fd, pageSize); err != nil {
		_ = unix.Close(fd)
		return nil, nil, os.NewSyscallError("ftruncate", err)
	}
	p, err := mapPage(fd)
	if err != nil {
		_ = unix.Close(fd)
		return nil, nil, err
	}
	return p, os.NewFile(uintptr(fd), "handoff-counters"), nil
}

// InheritedPage maps the counter page on fd PageFD in a worker and closes
// the fd; the mapping stays for the life of the process.
func InheritedPage() (*Page, error) {
	var st unix.Stat_t
	if err := unix.Fstat(PageFD, &st); err != nil {
		_ = unix.Close(PageFD)
		return nil, os.NewSyscallError("fstat", err)
	}
	if st.Size < pageSize {
		_ = unix.Close(PageFD)
		return nil, fmt.Errorf("ipc: fd %d is %d bytes, not a counter page", PageFD, st.Size)
	}
	p, err := mapPage(PageFD)
	_ = unix.Close(PageFD)
	return p, err
}

func mapPage(fd int) (*Page, error) {
	mem, err := unix.Mmap(fd, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, os.NewSyscallError("mmap", err)
	}
	return &Page{mem: mem, c: (*Counters)(unsafe.Pointer(&mem[0]))}, nil
}

// Counters returns the page's counters, valid until Close.
func (p *Page) Counters() *Counters { return p.c }

// Close unmaps the page. Nothing may use its Counters afterwards.
func (p *Page) Close() error {
	if p.mem == nil {
		return nil
	}
	err := unix.Munmap(p.mem)
	p.mem, p.c = nil, nil
	return err
}

// FrameFDs is the most fds per Conns frame for a process whose fd limit
// is limit: an eighth of it, between 1 and MaxConns, so that a reader
// always has room for a whole frame long before its table is full.
func FrameFDs(limit uint64) int {
	return int(min(max(limit/8, 1), MaxConns))
}
