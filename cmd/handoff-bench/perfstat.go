//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The events perf stat counts, as perf names them in its output.
const (
	perfSyscallEvent = "raw_syscalls:sys_enter"
	perfCtxswEvent   = "context-switches"
)

// Bounds on waiting for a perf stat the bench started.
const (
	perfAckTimeout   = 10 * time.Second // an answer to "enable" or "disable"
	perfStopTimeout  = 10 * time.Second // exiting after SIGINT, then SIGKILL
	perfProbeTimeout = 30 * time.Second
)

// perfCounts are what one perf stat counted, summed over its pids.
type perfCounts struct {
	Syscalls        uint64 `json:"syscalls"`
	ContextSwitches uint64 `json:"context_switches"`
}

// perfStatArgs is perf's command line: counting on the pids with the
// events disabled until "enable" arrives on fd 3, acknowledging each
// command on fd 4, the counts in CSV to out.
func perfStatArgs(pids []int, out string) []string {
	ps := make([]string, len(pids))
	for i, p := range pids {
		ps[i] = strconv.Itoa(p)
	}
	return []string{"stat", "-x,", "-o", out, "-D", "-1", "--control", "fd:3,4",
		"-e", perfSyscallEvent + "," + perfCtxswEvent, "-p", strings.Join(ps, ",")}
}

// parsePerfStat reads the output of perf stat -x, for the two events.
// A line is value,unit,event,run time,percentage,...; comments (#) and
// blank lines are skipped. "<not counted>" means the counter never ran:
// the tasks were not scheduled while it was enabled, so they made no
// syscall and no context switch, and it counts as 0. "<not supported>"
// and any other value are errors, as is an event that is missing. An
// event on several lines (one per PMU on hybrid CPUs) is summed.
func parsePerfStat(out []byte) (perfCounts, error) {
	var c perfCounts
	seen := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue // a message perf wrote among the counts
		}
		event := strings.TrimSpace(f[2])
		var dst *uint64
		switch event {
		case perfSyscallEvent:
			dst = &c.Syscalls
		case perfCtxswEvent:
			dst = &c.ContextSwitches
		default:
			continue
		}
		v := strings.TrimSpace(f[0])
		var n uint64
		switch {
		case v == "<not counted>":
		case strings.HasPrefix(v, "<"):
			return perfCounts{}, fmt.Errorf("perf stat: %s: %s", event, v)
		default:
			var err error
			if n, err = strconv.ParseUint(v, 10, 64); err != nil {
				x, ferr := strconv.ParseFloat(v, 64)
				if ferr != nil || x < 0 || math.IsInf(x, 0) || math.IsNaN(x) {
					return perfCounts{}, fmt.Errorf("perf stat: %s: bad count %q", event, v)
				}
				n = uint64(math.Round(x))
			}
		}
		*dst += n
		seen[event] = true
	}
	for _, e := range []string{perfSyscallEvent, perfCtxswEvent} {
		if !seen[e] {
			return perfCounts{}, fmt.Errorf("perf stat: no %s in its output", e)
		}
	}
	return c, nil
}

// probePerfStat checks that perf stat can count the events here, and
// that its output parses, on a short command of its own.
func probePerfStat(ctx context.Context, perf string) error {
	ctx, cancel := context.WithTimeout(ctx, perfProbeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, perf, "stat", "-x,", "-e", perfSyscallEvent+","+perfCtxswEvent, "--", "true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("perf stat: %w: %s", err, firstLine(out))
	}
	c, err := parsePerfStat(out)
	if err != nil {
		return err
	}
	if c.Syscalls == 0 {
		return errors.New("perf stat counted no syscalls of true(1)")
	}
	return nil
}

// firstLine is the first line of perf's messages that says something,
// for an error: not blank, and not its "Events enabled" and "Events
// disabled" answers to control commands.
func firstLine(b []byte) string {
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && l != "Events enabled" && l != "Events disabled" {
			return l
		}
	}
	return "no message"
}

// perfStat is one perf stat process the bench started, attached to some
// pids. Its events count only between enable and disable. The bench owns
// both pipes' ends it holds; perf owns the other ends (fds 3 and 4).
type perfStat struct {
	cmd    *exec.Cmd
	ctl    *os.File      // write end of perf's control pipe
	ack    *os.File      // read end of perf's acknowledgement pipe
	out    string        // perf's -o file
	stderr bytes.Buffer  // perf's messages; read only after exited
	exited chan struct{} // closed once cmd.Wait returned
}

// startPerfStat starts perf stat on pids, writing to out, with its
// events disabled. It returns once perf has answered a first command, so
// its counters are attached.
func startPerfStat(perf string, pids []int, out string) (_ *perfStat, err error) {
	if len(pids) == 0 {
		return nil, errors.New("perf stat: no pids")
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		_ = ctlR.Close()
		_ = ctlW.Close()
		return nil, err
	}
	p := &perfStat{ctl: ctlW, ack: ackR, out: out, exited: make(chan struct{})}
	p.cmd = exec.Command(perf, perfStatArgs(pids, out)...)
	p.cmd.Stderr = &p.stderr
	p.cmd.ExtraFiles = []*os.File{ctlR, ackW} // fds 3 and 4
	// Its own process group, so a terminal's Ctrl-C reaches only the
	// bench, which stops it; and killed with the bench.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = p.cmd.Start()
	// perf has its own copies now; without ours, its exit closes the ack
	// pipe and a read of it ends.
	_ = ctlR.Close()
	_ = ackW.Close()
	if err != nil {
		_ = ctlW.Close()
		_ = ackR.Close()
		return nil, err
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	defer func() {
		if err != nil {
			p.kill()
		}
	}()
	// "disable" while disabled changes nothing; its ack says perf is
	// attached and reading its control pipe.
	if err := p.command("disable"); err != nil {
		return nil, err
	}
	return p, nil
}

// command sends a control command and waits for perf's "ack".
func (p *perfStat) command(cmd string) error {
	if _, err := p.ctl.Write([]byte(cmd + "\n")); err != nil {
		return p.failed(cmd, err)
	}
	_ = p.ack.SetReadDeadline(time.Now().Add(perfAckTimeout))
	var got []byte
	buf := make([]byte, 64)
	for !bytes.Contains(got, []byte("ack\n")) {
		n, err := p.ack.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			return p.failed(cmd, err)
		}
		if len(got) > 4096 {
			return p.failed(cmd, fmt.Errorf("unexpected answer %q", got[:64]))
		}
	}
	return nil
}

// failed describes a command that got no ack, with perf's own message if
// it has exited.
func (p *perfStat) failed(cmd string, err error) error {
	select {
	case <-p.exited:
		return fmt.Errorf("perf stat %s: %w: %s", cmd, err, firstLine(p.stderr.Bytes()))
	default:
		return fmt.Errorf("perf stat %s: %w", cmd, err)
	}
}

// stop disables the events, SIGINTs perf, waits for it (SIGKILL after
// perfStopTimeout), and parses what it wrote.
func (p *perfStat) stop() (perfCounts, error) {
	disErr := p.command("disable")
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(perfStopTimeout):
		p.kill()
		return perfCounts{}, fmt.Errorf("perf stat did not exit %s after SIGINT", perfStopTimeout)
	}
	p.closePipes()
	if disErr != nil {
		return perfCounts{}, disErr
	}
	b, err := os.ReadFile(p.out)
	_ = os.Remove(p.out)
	if err != nil {
		return perfCounts{}, fmt.Errorf("perf stat: %w: %s", err, firstLine(p.stderr.Bytes()))
	}
	return parsePerfStat(b)
}

// kill SIGKILLs perf, waits for it and closes the pipes.
func (p *perfStat) kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
	p.closePipes()
	_ = os.Remove(p.out)
}

func (p *perfStat) closePipes() {
	_ = p.ctl.Close()
	_ = p.ack.Close()
}

// perfWindow counts a server's syscalls and context switches over the
// measured run: one perf stat on the master, one on the workers together.
type perfWindow struct {
	master  *perfStat // nil for a server without a master
	workers *perfStat
}

// startPerfWindow attaches perf stat to the master (if pid > 0) and to
// the workers, then enables both: the load may start when it returns.
func startPerfWindow(perf, dir, tag string, master int, workers []int) (*perfWindow, error) {
	w := &perfWindow{}
	var err error
	if master > 0 {
		if w.master, err = startPerfStat(perf, []int{master}, filepath.Join(dir, tag+"-master.perfstat")); err != nil {
			return nil, fmt.Errorf("master: %w", err)
		}
	}
	if w.workers, err = startPerfStat(perf, workers, filepath.Join(dir, tag+"-workers.perfstat")); err != nil {
		w.kill()
		return nil, fmt.Errorf("workers: %w", err)
	}
	for _, p := range []*perfStat{w.master, w.workers} {
		if p == nil {
			continue
		}
		if err := p.command("enable"); err != nil {
			w.kill()
			return nil, err
		}
	}
	return w, nil
}

// stop ends the window and returns the counts; master is nil for a
// server without one.
func (w *perfWindow) stop() (master *perfCounts, workers perfCounts, err error) {
	var mErr, wErr error
	if w.master != nil {
		var m perfCounts
		if m, mErr = w.master.stop(); mErr == nil {
			master = &m
		}
	}
	workers, wErr = w.workers.stop()
	if mErr != nil {
		return nil, perfCounts{}, fmt.Errorf("master: %w", mErr)
	}
	if wErr != nil {
		return nil, perfCounts{}, fmt.Errorf("workers: %w", wErr)
	}
	return master, workers, nil
}

func (w *perfWindow) kill() {
	for _, p := range []*perfStat{w.master, w.workers} {
		if p != nil {
			p.kill()
		}
	}
}
