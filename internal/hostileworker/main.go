//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/ipc"
	"github.com/handoff-go/handoff/scm"
)

func main() {
	mode := os.Getenv("HANDOFF_HOSTILE")
	once := os.Getenv("HANDOFF_HOSTILE_ONCE")
	_, statErr := os.Stat(once)
	if mode == "" || (once != "" && statErr == nil) {
		good := os.Getenv("HANDOFF_HOSTILE_GOOD")
		err := syscall.Exec(good, []string{good}, os.Environ())
		fail("exec %s: %v", good, err)
	}
	if once != "" {
		if err := os.WriteFile(once, nil, 0o600); err != nil {
			fail("%v", err)
		}
	}
	sc, err := scm.NewConn(ipc.ControlFD)
	if err != nil {
		fail("control socket: %v", err)
	}
	ctl := ipc.NewConn(sc)
	write := func(frame []byte, fds []int) {
		if err := ctl.WriteFrame(frame, fds); err != nil {
			fail("write: %v", err)
		}
	}
	write(ipc.AppendHello(nil, os.Getpid()), nil)
	first, _, _ := strings.Cut(os.Getenv("HANDOFF_TEST_LISTEN"), ",")
	network, address, _ := strings.Cut(first, "!")
	var m ipc.Message
	lid := uint32(1) // the test's listener, the master's first
	var conns *ipc.ConnsSocket
	if mode == "noread-exit" || mode == "stuck" || mode == "write-conns" {
		// Only these take connections; the others misbehave without.
		write(ipc.AppendListen(nil, 1, network, address), nil)
		fds, err := ctl.Read(&m)
		if err != nil || m.Kind != ipc.KindListenReply || len(fds) != 1 {
			fail("listen reply: %v %v %d fds", err, m.Kind, len(fds))
		}
		lid = m.Listener
		if conns, err = ipc.ConnsSocketFrom(fds[0]); err != nil {
			fail("conns socket: %v", err)
		}
	}
	raw := func(b []byte, fds []int) { _ = sc.WriteMsg(b, fds) }
	unlisten := func() { write(ipc.AppendReturn(nil, lid, 0), nil) }
	pipe := func() []int {
		p := make([]int, 2)
		if err := syscall.Pipe(p); err != nil {
			fail("%v", err)
		}
		return p
	}

	switch mode {
	case "noread-exit":
		// Wait until connections are waiting for it, then die without
		// reading them: the master must take them back and serve them.
		for {
			if n, err := conns.Unread(); err == nil && n > 0 {
				os.Exit(3)
			}
			time.Sleep(time.Millisecond)
		}
	case "stuck":
		// Neither reads its connections nor answers pings.
		time.Sleep(time.Hour)
	case "write-conns":
		// The conns socket is the master's to write: a worker writing it
		// gets EPIPE, fds or not.
		for i := 0; i < 100; i++ {
			if err := conns.Fd(func(fd int) {
				_ = syscall.Sendmsg(fd, ipc.AppendConns(nil, lid, []ipc.Handoff{{}}), syscall.UnixRights(pipe()[0]), nil, 0)
			}); err != nil {
				fail("%v", err)
			}
		}
		os.Exit(0)
	case "unknown-kind":
		raw([]byte{ipc.Version, 200, 0, 0}, nil)
	case "bad-version":
		raw([]byte{ipc.Version + 1, byte(ipc.KindReturn), 0, 0, 0, 0, 0, 0}, nil)
	case "truncated":
		f := ipc.AppendListen(nil, 1, "tcp", "127.0.0.1:1")
		raw(f[:len(f)-5], nil)
	case "oversized":
		raw(make([]byte, ipc.MaxFrame+100), nil)
	case "fds-hello":
		raw(ipc.AppendHello(nil, os.Getpid()), pipe())
	case "conns-frame":
		// Conns frames go only from the master to a worker.
		raw(ipc.AppendConns(nil, 1, []ipc.Handoff{{}}), pipe()[:1])
	case "bad-returns":
		// A pipe, and a socket of its own, handed back as if they were
		// connections of the master's listener.
		sp, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err != nil {
			fail("%v", err)
		}
		raw(ipc.AppendReturn(nil, 1, 2), []int{pipe()[0], sp[0]})
		raw(ipc.AppendReturn(nil, 9999, 1), pipe()[:1]) // a listener that does not exist
	case "bad-listen":
		for i := 0; i < 400; i++ {
			if i%2 == 0 {
				write(ipc.AppendListen(nil, uint32(i+2), "tcp", fmt.Sprintf("127.0.0.1:%d", 70000+i)), nil)
			} else {
				write(ipc.AppendListen(nil, uint32(i+2), "bogus-net", "x"), nil)
			}
			for { // wait for the reply
				fds, err := ctl.Read(&m)
				if err != nil {
					fail("read: %v", err)
				}
				for _, fd := range fds {
					_ = syscall.Close(fd)
				}
				if m.Kind == ipc.KindListenReply {
					break
				}
			}
		}
	case "flood":
		for i := 0; i < 100000; i++ {
			if err := ctl.WriteUser([]byte(fmt.Sprint(i))); err != nil {
				break
			}
		}
	case "bad-json":
		raw(append([]byte{ipc.Version, byte(ipc.KindUser), 0, 0}, "{not json"...), nil)
	case "huge-message":
		chunk := make([]byte, ipc.MaxFrame-ipc.HeaderSize)
		for i := range chunk {
			chunk[i] = '1'
		}
		for i := 0; i < ipc.MaxMessage/len(chunk)+2; i++ {
			raw(append(binary.LittleEndian.AppendUint16([]byte{ipc.Version, byte(ipc.KindUser)}, ipc.FlagMore), chunk...), nil)
		}
	default:
		fail("unknown HANDOFF_HOSTILE=%q", mode)
	}
	// Stop listening and stay alive until killed or the master goes away.
	unlisten()
	for {
		fds, err := ctl.Read(&m)
		if err != nil {
			if isProtocol(err) {
				continue
			}
			os.Exit(0)
		}
		for _, fd := range fds {
			_ = syscall.Close(fd)
		}
	}
}

func isProtocol(err error) bool {
	return strings.HasPrefix(err.Error(), "ipc:")
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "hostileworker: "+format+"\n", args...)
	os.Exit(2)
}
