//go:build linux

package main

import (
	"bytes"
	"encoding/gob"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/internal/proctest"
	"golang.org/x/sys/unix"
)

// A master started as tableflip starts a new one (tableflipParentEnv set,
// its pipes at fds 3 and 4) takes them as tableflip's, which pins the
// copied name, and passes neither the variable nor the pipes to its
// workers: its inherited fds are close-on-exec.
func TestCLIWorkersDoNotSeeTableflip(t *testing.T) {
	readyR, readyW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer readyR.Close()
	namesR, namesW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer namesW.Close() // the "old master" exits when the test ends
	// What the old master sends: the names of the fds it passes, none.
	if err := gob.NewEncoder(namesW).Encode([][]string{}); err != nil {
		t.Fatal(err)
	}
	addr := proctest.FreeAddr(t)
	cmd := exec.Command(handoffBin, "--listen", addr, "--log-format", "json", "--workers", "1")
	cmd.Env = append(os.Environ(), tableflipParentEnv+"=yes")
	cmd.ExtraFiles = []*os.File{readyW, namesR} // fds 3 and 4, as tableflip passes them
	out := &proctest.Output{}
	cmd.Stdout, cmd.Stderr = out, out
	m := launch(t, cmd, addr, out)
	_ = readyW.Close()
	_ = namesR.Close()

	// Ready told the "old master": tableflip took the variable for its
	// sentinel, so the name copied in tableflipParentEnv is still its.
	_ = readyR.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, 1)
	if n, err := readyR.Read(b); n != 1 || err != nil {
		t.Fatalf("no readiness byte from the master (%v): tableflip no longer takes %s as its sentinel; update tableflipParentEnv", err, tableflipParentEnv)
	}
	if !strings.Contains(out.String(), `"upgraded":true`) {
		t.Errorf("the master does not say it was upgraded:\n%s", out.String())
	}

	pipes := map[string]bool{}
	for _, f := range []*os.File{readyR, namesW} {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			t.Fatal(err)
		}
		pipes[fmt.Sprintf("pipe:[%d]", st.Ino)] = true
	}
	master := m.cmd.Process.Pid
	for _, fd := range []int{3, 4} {
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%d", master, fd))
		if err != nil {
			continue // closed already: tableflip closes the ready pipe
		}
		if flags := fdFlags(string(info)); flags&unix.O_CLOEXEC == 0 {
			t.Errorf("the master's fd %d (flags %#o) is not close-on-exec", fd, flags)
		}
	}
	workers := m.workerPIDs()
	if len(workers) == 0 {
		t.Fatal("no worker")
	}
	for _, w := range workers {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", w))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(env, []byte(tableflipParentEnv)) {
			t.Errorf("worker %d has %s in its environment", w, tableflipParentEnv)
		}
		ents, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", w))
		for _, e := range ents {
			if link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", w, e.Name())); err == nil && pipes[link] {
				t.Errorf("worker %d holds tableflip's pipe %s as fd %s", w, link, e.Name())
			}
		}
	}
}

// fdFlags returns the flags line of a /proc/PID/fdinfo file.
func fdFlags(info string) int {
	for _, line := range strings.Split(info, "\n") {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 8, 64)
			return int(n)
		}
	}
	return 0
}
