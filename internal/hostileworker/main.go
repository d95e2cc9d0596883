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
	if mode == "noack-exit" || mode == "stuck" {
		// Only these take connections; the others misbehave without.
		write(ipc.AppendListen(nil, 1, network, address), nil)
		if _, err := ctl.Read(&m); err != nil || m.Kind != ipc.KindListenReply {
			fail("listen reply: %v %v", err, m.Kind)
		}
		lid = m.Listener
	}
	raw := func(b []byte, fds []int) { _ = sc.WriteMsg(b, fds) }
	unlisten := func() { write(ipc.AppendConns(nil, true, lid, nil), nil) }

	switch mode {
	case "noack-exit":
		for {
			fds, err := ctl.Read(&m)
			if err != nil {
				fail("read: %v", err)
			}
			if m.Kind == ipc.KindConns {
				_ = fds // neither acked nor closed: the master must not lose them
				os.Exit(3)
			}
		}
	case "stuck":
		time.Sleep(time.Hour)
	case "unknown-kind":
		raw([]byte{ipc.Version, 200, 0, 0}, nil)
	case "bad-version":
		raw([]byte{ipc.Version + 1, byte(ipc.KindReport), 0, 0, 0, 0, 0, 0}, nil)
	case "truncated":
		f := ipc.AppendReport(nil, []uint64{1, 2, 3}, nil)
		raw(f[:len(f)-5], nil)
	case "oversized":
		raw(make([]byte, ipc.MaxFrame+100), nil)
	case "fds-report":
		p := make([]int, 2)
		if err := syscall.Pipe(p); err != nil {
			fail("%v", err)
		}
		raw(ipc.AppendReport(nil, nil, []uint64{1}), p)
	case "bogus-ids":
		raw(ipc.AppendReport(nil, []uint64{1 << 60, 12345}, []uint64{1 << 61, 7}), nil)
		f := ipc.AppendConns(nil, true, 1, []uint64{99})
		p := make([]int, 2)
		if err := syscall.Pipe(p); err != nil {
			fail("%v", err)
		}
		raw(f, p[:1]) // a pipe returned as if it were a connection
	case "bad-listen":
		for i := 0; i < 400; i++ {
			if i%2 == 0 {
				write(ipc.AppendListen(nil, uint32(i+2), "tcp", fmt.Sprintf("127.0.0.1:%d", 70000+i)), nil)
			} else {
				write(ipc.AppendListen(nil, uint32(i+2), "bogus-net", "x"), nil)
			}
			for { // wait for the reply, handing back any connection
				fds, err := ctl.Read(&m)
				if err != nil {
					fail("read: %v", err)
				}
				if m.Kind == ipc.KindConns {
					write(ipc.AppendConns(nil, true, m.Listener, m.IDs), fds)
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
	// Stop listening, hand back whatever arrives, and stay alive until
	// killed or the master goes away.
	unlisten()
	for {
		fds, err := ctl.Read(&m)
		if err != nil {
			if isProtocol(err) {
				continue
			}
			os.Exit(0)
		}
		if m.Kind == ipc.KindConns {
			write(ipc.AppendConns(nil, true, m.Listener, m.IDs), fds)
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
