//go:build linux

package main

import (
	"context"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cloudflare/tableflip"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// This file is the zero-downtime upgrade of the master itself, done by
// github.com/cloudflare/tableflip. On SIGUSR2 the running master starts
// its own binary again (the file on disk now, so a new version), with the
// same arguments and environment, and hands it every listening socket:
// those of --listen and --admin. The new master takes them with
// balancer.Adopt, starts its workers, and once they listen calls
// Upgrader.Ready. The old master's Upgrader.Exit then fires: it stops
// accepting, drains its workers and exits 0. Both masters accept on the
// same sockets meanwhile, so no connection finds a closed port; each one
// hands what it accepts to its own workers.

// DefaultUpgradeTimeout is how long a new master has to get its workers
// listening before the old master kills it and keeps serving.
const DefaultUpgradeTimeout = tableflip.DefaultUpgradeTimeout

// tableflipParentEnv is the variable that tableflip sets for a new master
// and that makes its New look for a parent's pipes. Workers must not
// inherit it: a worker program that used tableflip itself would take its
// fds for a parent master's pipes (fd 3 is its control socket). It is a
// copy of tableflip's unexported sentinelEnvVar (parent.go, v1.2.3), and
// a copy is the only way: tableflip exports neither the name nor a way
// to keep it from a child (its environment is os.Environ, read when New
// runs and when it starts the next master), and the master's environment
// must stay whole for the next master. TestCLIWorkersDoNotSeeTableflip
// fails if tableflip stops taking this name for its own.
const tableflipParentEnv = "TABLEFLIP_HAS_PARENT_7DIU3"

// newUpgrader makes this process's only tableflip.Upgrader. In a master
// started by an upgrade it holds the sockets the old one handed over.
// tableflip writes pidFile, if set, each time a master becomes ready.
func newUpgrader(pidFile string, timeout time.Duration) (*tableflip.Upgrader, error) {
	upg, err := tableflip.New(tableflip.Options{PIDFile: pidFile, UpgradeTimeout: timeout})
	if err != nil {
		return nil, err
	}
	// tableflip has taken what it inherited (its pipes to the old
	// master, whichever fds they are, and the sockets); none of it may
	// reach a worker, which gets exactly the fds the balancer passes it.
	closeOnExecFrom(3)
	_ = os.Unsetenv(tableflipParentEnv)
	return upg, nil
}

// closeOnExecFrom sets close-on-exec on every fd from first up. The Go
// runtime opens every fd of its own so; an fd without it was inherited.
func closeOnExecFrom(first int) {
	if unix.CloseRange(uint(first), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC) == nil {
		return
	}
	// Before Linux 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= first {
			unix.CloseOnExec(fd)
		}
	}
}

// stopUpgrader ends upg when the last master stops without an upgrade:
// tableflip closes its copies of the sockets and removes the paths of the
// Unix sockets it opened (not those of systemd). Exit is closed when that
// is done.
func stopUpgrader(upg *tableflip.Upgrader) {
	upg.Stop()
	select {
	case <-upg.Exit():
	case <-time.After(5 * time.Second):
	}
}

// removePIDFile removes the pid file if it still names this process: after
// an upgrade it names the new master, which keeps it.
func removePIDFile(path string) {
	if path == "" {
		return
	}
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(os.Getpid()) {
		_ = os.Remove(path)
	}
}

// waitForParent returns a channel closed once the old master that started
// this one has exited, or nil if there is none. Until then tableflip
// refuses to upgrade again. Its goroutine ends then, or when ctx is done.
func waitForParent(ctx context.Context, upg *tableflip.Upgrader) <-chan struct{} {
	if !upg.HasParent() {
		return nil
	}
	exited := make(chan struct{})
	go func() {
		// An error says the old master misbehaved on its way out; it
		// has gone all the same.
		_ = upg.WaitForParent(ctx)
		if ctx.Err() == nil {
			close(exited)
		}
	}()
	return exited
}

// errParentRunning is the text of tableflip's refusal to upgrade while the
// old master that started this one still runs. It is not a failure: the
// master keeps serving and may be upgraded once the old one has drained.
// The master's loop checks first (waitForParent), so this is only the race
// in which the old master exits meanwhile: WaitForParent has returned,
// and tableflip's own loop has not yet seen the exit. The text is the only
// way to tell: tableflip (upgrader.go, v1.2.3) makes this error with
// errors.New where it returns it, with no sentinel or type. Were the text
// to change, that race would be logged as an error instead of a warning.
const errParentRunning = "parent hasn't exited"

// upgradeFailed logs an upgrade that did not happen: a refusal because the
// previous master still drains is a warning, anything else an error.
func upgradeFailed(log zerolog.Logger, err error) {
	if err.Error() == errParentRunning {
		log.Warn().Err(err).Msg("SIGUSR2 while the previous master still drains: no upgrade; this master keeps serving")
		return
	}
	log.Error().Err(err).Msg("upgrade failed; this master keeps serving")
}
