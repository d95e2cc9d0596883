//go:build linux

package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"github.com/handoff-go/handoff/internal/loadtest"
	"github.com/handoff-go/handoff/internal/proctest"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// aboutAWorker matches log messages about one worker ("worker exited",
// "disconnecting worker"), not about the master's workers as a whole
// ("draining workers").
var aboutAWorker = regexp.MustCompile(`\bworker\b`)

// TestCLIWorkerLogLines checks that every JSON log line about a worker
// carries its id and pid, and that the pid is the worker's.
func TestCLIWorkerLogLines(t *testing.T) {
	m := startMaster(t, "--workers", "2")
	pids := m.workerPIDs()
	// Some life: a crash and restart, a rolling restart, a shutdown.
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the restart", func() bool { return strings.Contains(m.out.String(), `"worker":3`) && len(m.workerPIDs()) == 2 })
	if err := m.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rolling restart", func() bool { return strings.Contains(m.out.String(), "rolling restart done") })
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	m.wait(t, 30*time.Second, "master did not exit")

	pidOf := map[int]int{}
	messages := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(m.out.String()))
	for sc.Scan() {
		var line struct {
			Message string   `json:"message"`
			Worker  *float64 `json:"worker"`
			PID     *float64 `json:"pid"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Errorf("not a JSON log line: %q", sc.Text())
			continue
		}
		if !aboutAWorker.MatchString(line.Message) && line.Worker == nil {
			continue
		}
		if line.Worker == nil || line.PID == nil {
			t.Errorf("line about a worker without worker and pid: %s", sc.Text())
			continue
		}
		w, pid := int(*line.Worker), int(*line.PID)
		if p, ok := pidOf[w]; ok && p != pid {
			t.Errorf("worker %d logged with pids %d and %d", w, p, pid)
		}
		pidOf[w] = pid
		messages[line.Message] = true
	}
	for _, msg := range []string{"worker started", "worker listening", "disconnecting worker", "worker exited", "worker died unexpectedly; restarting"} {
		if !messages[msg] {
			t.Errorf("no %q line; saw %v", msg, messages)
		}
	}
	logged := map[int]bool{}
	for _, pid := range pidOf {
		logged[pid] = true
	}
	for _, pid := range pids {
		if !logged[pid] {
			t.Errorf("worker pid %d is in no log line: %v", pid, pidOf)
		}
	}
}

// TestCLIWorkerOutputPassesThrough runs a worker command that writes to
// stdout and stderr before it becomes the demo worker, and finds both in
// the master's stdout and stderr.
func TestCLIWorkerOutputPassesThrough(t *testing.T) {
	addr := proctest.FreeAddr(t)
	script := `echo "to stdout from worker $HANDOFF_WORKER_ID"; echo "to stderr from worker $HANDOFF_WORKER_ID" >&2; exec "$0" "$@"`
	cmd := exec.Command(handoffBin, "--listen", addr, "--log-format", "json", "--workers", "2", "--",
		"sh", "-c", script, handoffBin, "--listen", addr)
	stdout, stderr := &proctest.Output{}, &proctest.Output{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	m := launch(t, cmd, addr, stderr)
	if err := loadtest.Get(http.DefaultClient, "http://"+m.addr+"/"); err != nil {
		t.Fatal(err)
	}
	// The master serves once one worker listens; the other may start later.
	waitFor(t, "both workers' output", func() bool {
		for id := 1; id <= 2; id++ {
			if !strings.Contains(stdout.String(), fmt.Sprintf("to stdout from worker %d\n", id)) ||
				!strings.Contains(stderr.String(), fmt.Sprintf("to stderr from worker %d\n", id)) {
				return false
			}
		}
		return true
	})
	if strings.Contains(stdout.String(), "stderr") || strings.Contains(stderr.String(), "to stdout") {
		t.Errorf("streams mixed up:\nstdout %q", stdout.String())
	}
}
