//go:build linux

package balancer

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"
)

// killHung kills w, which the master found hung (a heartbeat left
// unanswered, a stall past HandoffTimeout, a drain past ShutdownTimeout).
// It first sends SIGQUIT, on which Go's runtime writes every goroutine's
// stack to the worker's stderr (Options.Stderr, the master's by default)
// and exits; it waits for that up to DumpWait, then sends SIGKILL. That
// dump is what turns "it hung" into a fix. A worker stopped by SIGSTOP
// cannot run its handler, so it is killed at once. killHung blocks up to
// DumpWait: call it off the master's lock and its timers.
func (w *Worker) killHung(why string) {
	pid := w.PID()
	if stopped(pid) {
		w.log.Error().Str("why", why).Msg("worker is stopped (SIGSTOP or a debugger): it cannot write its goroutines; killing it")
		_ = w.Kill(syscall.SIGKILL)
		return
	}
	w.log.Error().Str("why", why).Str("dump_wait", DumpWait.String()).
		Msg("worker hung; SIGQUIT: its goroutines' stacks follow on its stderr, then SIGKILL")
	if w.Kill(syscall.SIGQUIT) != nil {
		return // it has exited
	}
	t := time.NewTimer(DumpWait)
	defer t.Stop()
	select {
	case <-w.exited:
		w.log.Error().Str("why", why).Msg("worker wrote its goroutines and exited")
	case <-t.C:
		w.log.Error().Str("why", why).Msg("worker did not exit after SIGQUIT; killing it")
		_ = w.Kill(syscall.SIGKILL)
	}
}

// stopped reports whether process pid is stopped (state T or t in
// /proc/PID/stat), where a signal other than SIGKILL waits for SIGCONT.
func stopped(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name, which may itself hold ") ".
	i := strings.LastIndex(string(b), ") ")
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] == 'T' || b[i+2] == 't'

}
