//go:build linux

package main

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/cloudflare/tableflip"
	"github.com/handoff-go/handoff/balancer"
	"github.com/rs/zerolog"
)

// listenSpec is one --listen value: [NAME=]HOST:PORT or [NAME=]unix:PATH.
type listenSpec struct {
	text    string // as written
	name    string // matches a socket's FileDescriptorName= under systemd
	network string // "tcp" or "unix"
	address string // for net.Listen and worker.Listen
}

// parseListen parses a --listen value. A NAME= prefix is a name with no
// ':' or '/', since systemd's LISTEN_FDNAMES separates names with ':'.
func parseListen(a string) (listenSpec, error) {
	s := listenSpec{text: a}
	rest := a
	if i := strings.IndexByte(a, '='); i >= 0 && !strings.ContainsAny(a[:i], ":/[") {
		s.name, rest = a[:i], a[i+1:]
		if s.name == "" {
			return s, fmt.Errorf("--listen %q: empty NAME before '='", a)
		}
	}
	if p, ok := strings.CutPrefix(rest, "unix:"); ok {
		if p == "" {
			return s, errors.New("--listen unix: needs a path")
		}
		s.network, s.address = "unix", p
		return s, nil
	}
	if !strings.Contains(rest, ":") {
		return s, fmt.Errorf("--listen %q: want [NAME=]HOST:PORT, [NAME=]:PORT or [NAME=]unix:PATH", a)
	}
	s.network, s.address = "tcp", rest
	return s, nil
}

// Where a listening socket came from, for the logs.
const (
	fromSystemd         = "systemd"
	fromPreviousSystemd = "systemd, via the previous master"
	fromPrevious        = "previous master"
	fromNew             = "opened"
)

// systemdNetwork is the network under which a socket that systemd passed
// is handed to the next master. tableflip unlinks the paths of the "unix"
// sockets it hands over when the last master stops; a socket unit's path
// is systemd's, so it goes under another name.
func systemdNetwork(network string) string { return "systemd-" + network }

// openListeners gives the balancer one listening socket per spec: one that
// systemd passed (socket activation), one that the previous master handed
// over (a SIGUSR2 upgrade), or a new one, in that order. Every socket is
// also registered with upg, so that the next master inherits it. Sockets
// that systemd passed and no spec uses are closed.
func openListeners(b *balancer.Balancer, upg *tableflip.Upgrader, so balancer.SocketOptions, specs []listenSpec, activated []activatedListener, log zerolog.Logger) error {
	match, err := matchActivated(specs, activated)
	used := make([]bool, len(activated))
	defer func() {
		for i, a := range activated {
			if !used[i] {
				if err == nil {
					log.Warn().Str("name", a.name).Str("address", a.ln.Addr().String()).
						Msg("systemd passed a socket that no --listen matches; closing it")
				}
				_ = a.ln.Close()
			}
		}
	}()
	if err != nil {
		return err
	}
	for i, s := range specs {
		var ln net.Listener
		from := ""
		if j := match[i]; j >= 0 {
			used[j] = true
			ln, from = activated[j].ln, fromSystemd
			tl, ok := ln.(tableflip.Listener)
			if !ok {
				err = fmt.Errorf("--listen %s: systemd passed a %T", s.text, ln)
			} else {
				err = upg.AddListener(systemdNetwork(s.network), s.address, tl)
			}
		} else {
			ln, from, err = inheritOrListen(upg, so, s)
		}
		if err != nil {
			if ln != nil {
				_ = ln.Close()
			}
			return fmt.Errorf("--listen %s: %w", s.text, err)
		}
		// The balancer works on its own dup; upg keeps another for the
		// next master.
		addr, err := b.Adopt(s.network, s.address, ln)
		_ = ln.Close()
		if err != nil {
			return err
		}
		log.Info().Str("listen", s.text).Str("address", addr.String()).Str("from", from).Msg("listener ready")
	}
	return nil
}

// inheritOrListen returns the socket for s that the previous master handed
// over, or opens one with so.
func inheritOrListen(upg *tableflip.Upgrader, so balancer.SocketOptions, s listenSpec) (net.Listener, string, error) {
	ln, err := upg.Listener(systemdNetwork(s.network), s.address)
	if ln != nil || err != nil {
		return ln, fromPreviousSystemd, err
	}
	ln, err = upg.Listener(s.network, s.address)
	if ln != nil || err != nil {
		return ln, fromPrevious, err
	}
	// Opened as the balancer opens its own (--unix-mode, --unix-group,
	// --backlog), but kept by upg for the next master; the balancer
	// adopts a dup.
	ln, err = upg.ListenWithCallback(s.network, s.address, so.Listen)
	return ln, fromNew, err
}
