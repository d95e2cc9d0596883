//go:build linux

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/handoff-go/handoff/internal/proctest"
)

// TestCLIStatus runs `handoff status` against a live master, as an
// operator would: a table with a row per worker, the listener's queue and
// the totals, within 100 columns; the raw document with --json; and a
// clear failure, exit 1, where no master answers.
func TestCLIStatus(t *testing.T) {
	admin := proctest.FreeAddr(t)
	m := startMaster(t, "--workers", "2", "--admin", admin)
	pids := m.workerPIDs()
	out, err := exec.Command(handoffBin, "status", "--admin", admin).Output()
	if err != nil {
		t.Fatalf("handoff status: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{"ID", "PID", "SLOT", "STATE", "UPTIME", "ACTIVE", "BUSY", "UNREAD", "RSS", "RESTARTS", "LAST PONG",
		"LISTENER", m.addr, "2 of 2 workers listening", "handoff "} {
		if !strings.Contains(text, want) {
			t.Errorf("handoff status has no %q:\n%s", want, text)
		}
	}
	for _, pid := range pids {
		if !strings.Contains(text, " "+strconv.Itoa(pid)+" ") {
			t.Errorf("handoff status has no row for worker pid %d:\n%s", pid, text)
		}
	}
	for i, line := range strings.Split(text, "\n") {
		if len([]rune(line)) > 100 {
			t.Errorf("line %d is %d columns: %q", i+1, len([]rune(line)), line)
		}
	}

	raw, err := exec.Command(handoffBin, "status", "--admin", admin, "--json").Output()
	var doc statusJSON
	if err != nil || json.Unmarshal(raw, &doc) != nil || len(doc.Workers) != 2 || len(doc.Listeners) != 1 || doc.Listeners[0].Listener != m.addr || doc.Listeners[0].Backlog == 0 {
		t.Errorf("handoff status --json: %v\n%s", err, raw)
	}

	dead := proctest.FreeAddr(t)
	var stderr bytes.Buffer
	cmd := exec.Command(handoffBin, "status", "--admin", dead)
	cmd.Stderr = &stderr
	err = cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(stderr.String(), "no answer from "+dead) {
		t.Errorf("handoff status on a dead address: %v, %q; want exit 1 saying nothing answers", err, stderr.String())
	}
}
