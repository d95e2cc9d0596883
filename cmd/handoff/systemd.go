//go:build linux

package main

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/handoff-go/handoff/balancer"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// This file is the master's side of systemd: socket activation
// (LISTEN_FDS) and readiness notifications (NOTIFY_SOCKET).

// activatedListener is a listening socket that systemd passed.
type activatedListener struct {
	name string // LISTEN_FDNAMES entry (FileDescriptorName=), or LISTEN_FD_<fd>
	ln   net.Listener
}

// activatedListeners takes the sockets that systemd passed this process,
// if LISTEN_PID is this process, and unsets LISTEN_PID, LISTEN_FDS and
// LISTEN_FDNAMES so that no worker sees them. It owns the fds: each one
// is closed once net.FileListener has dup'd it. A passed fd that is not a
// listening stream socket is logged and closed.
func activatedListeners(log zerolog.Logger) []activatedListener {
	var out []activatedListener
	for _, f := range activation.Files(true) {
		ln, err := net.FileListener(f)
		_ = f.Close()
		if err != nil {
			log.Warn().Err(err).Str("name", f.Name()).Msg("systemd passed an fd that is not a listening socket; closing it")
			continue
		}
		out = append(out, activatedListener{name: f.Name(), ln: ln})
	}
	return out
}

// matchActivated pairs each spec with the socket systemd passed for it:
// first by name (a spec's NAME= and the socket's FileDescriptorName=), then
// by the address the socket is bound to, as the balancer matches a
// request with an open socket (balancer.Serves). It returns, per spec, the index
// of its socket in socks, or -1 if the master is to open its own. A spec
// whose name matches a socket of another network is an error.
func matchActivated(specs []listenSpec, socks []activatedListener) ([]int, error) {
	match := make([]int, len(specs))
	taken := make([]bool, len(socks))
	for i, s := range specs {
		match[i] = -1
		if s.name == "" {
			continue
		}
		for j, a := range socks {
			if taken[j] || a.name != s.name {
				continue
			}
			if got := networkOf(a.ln.Addr()); got != s.network {
				return nil, fmt.Errorf("--listen %s: systemd's socket %q is %s (%s), not %s", s.text, a.name, got, a.ln.Addr(), s.network)
			}
			match[i], taken[j] = j, true
			break
		}
	}
	for i, s := range specs {
		if match[i] >= 0 {
			continue
		}
		for j, a := range socks {
			if !taken[j] && balancer.Serves(a.ln.Addr(), s.network, s.address) {
				match[i], taken[j] = j, true
				break
			}
		}
	}
	return match, nil
}

func networkOf(a net.Addr) string {
	if _, ok := a.(*net.UnixAddr); ok {
		return "unix"
	}
	return "tcp"
}

// notifier sends sd_notify(3) states to systemd. Without NOTIFY_SOCKET it
// does nothing. Workers are started with NOTIFY_SOCKET empty, so only the
// master speaks for the service.
type notifier struct {
	send func(state string) (bool, error) // daemon.SdNotify without unsetting
	log  zerolog.Logger
}

func newNotifier(log zerolog.Logger) notifier {
	return notifier{send: func(state string) (bool, error) { return daemon.SdNotify(false, state) }, log: log}
}

func (n notifier) notify(lines ...string) {
	state := strings.Join(lines, "\n")
	sent, err := n.send(state)
	if err != nil {
		n.log.Warn().Err(err).Str("state", state).Msg("sd_notify failed")
		return
	}
	if sent {
		n.log.Debug().Str("state", state).Msg("sd_notify")
	}
}

// ready says the workers listen. A master started by a SIGUSR2 upgrade
// also tells systemd it is now the main process.
func (n notifier) ready(pid int, upgraded bool, status string) {
	lines := []string{daemon.SdNotifyReady, "STATUS=" + status}
	if upgraded {
		lines = append(lines, "MAINPID="+strconv.Itoa(pid))
	}
	n.notify(lines...)
}

// reloading says a rolling restart or an upgrade has begun; ready follows.
// MONOTONIC_USEC lets Type=notify-reload units match it with the reload.
func (n notifier) reloading(status string) {
	n.notify(daemon.SdNotifyReloading, "MONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10), "STATUS="+status)
}

// stopping says the master is shutting down.
func (n notifier) stopping(status string) {
	n.notify(daemon.SdNotifyStopping, "STATUS="+status)
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
