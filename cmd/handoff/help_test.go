//go:build linux

package main

import (
	"bytes"
	"errors"
	"flag"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"
)

func TestHelpGroupsEveryFlag(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	if _, err := parseFlagsTo([]string{"--help"}, &out); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: %v", err)
	}
	// Every flag parseFlagsTo defines is in exactly one group.
	seen := map[string]int{}
	for _, g := range helpGroups {
		for _, f := range g.flags {
			seen[f.name]++
		}
	}
	for _, name := range definedFlags(t) {
		if seen[name] != 1 {
			t.Errorf("flag --%s is in %d groups of --help, want 1", name, seen[name])
		}
		if !strings.Contains(out.String(), "  --"+name+" ") && !strings.Contains(out.String(), "  --"+name+"\n") {
			t.Errorf("--help shows no line for --%s", name)
		}
		delete(seen, name)
	}
	delete(seen, "help")
	for name := range seen {
		t.Errorf("--help groups --%s, which is not a flag", name)
	}
	for i, line := range strings.Split(out.String(), "\n") {
		if n := len([]rune(line)); n > helpWidth {
			t.Errorf("--help line %d is %d columns, over %d: %q", i+1, n, helpWidth, line)
		}
	}
	for _, want := range []string{"Listening:", "Workers:", "Policies and queues:", "Lifecycle:", "Fleet", "Admin:", "Logging:", "Examples:"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help has no %q section", want)
		}
	}
}

// definedFlags lists the flags of the command line.
func definedFlags(t *testing.T) []string {
	t.Helper()
	var names []string
	defineFlags(&config{}, new(listFlag)).VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	if len(names) == 0 {
		t.Fatal("no flags defined")
	}
	return names
}

func TestCLIFlagErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want string // the first line of stderr
	}{
		{"not a number", []string{"--workers", "abc"}, "handoff: --workers abc: want a whole number, such as 4"},
		{"duration without a unit", []string{"--shutdown-timeout", "5"}, "handoff: --shutdown-timeout 5: want a duration with a unit, such as 5s"},
		{"unknown flag", []string{"--nope"}, "handoff: unknown flag --nope"},
		{"missing value", []string{"--workers"}, "handoff: --workers needs a value"},
		{"bad size", []string{"--max-memory", "lots"}, "handoff: --max-memory lots: want a size such as 512MiB"},
		{"bad policy", []string{"--policy", "random"}, "handoff: --policy random: want round-robin, least-loaded, least-requests or ip-hash"},
		{"negative", []string{"--workers", "-1"}, "handoff: --workers must not be negative, not -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(handoffBin, tt.args...)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Errorf("exit: %v, want status 2", err)
			}
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if len(lines) > 3 || !strings.HasPrefix(lines[0], tt.want) || lines[len(lines)-1] != "run 'handoff --help' for usage" {
				t.Errorf("stderr:\n%s\nwant at most 3 lines, the first starting %q, the last the hint", stderr.String(), tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout: %q, want nothing", stdout.String())
			}
		})
	}
}

func TestCLIVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(handoffBin, "--version").Output()
	if err != nil || !strings.HasPrefix(string(out), "handoff ") || strings.Count(string(out), "\n") != 1 {
		t.Errorf("--version: %q, %v; want one line starting \"handoff \"", out, err)
	}
}

// TestCLIStartFailureIsOnePlainLine checks what a person sees when the
// port is taken: one plain line and exit 1; and a program that asked for
// JSON logs gets JSON.
func TestCLIStartFailureIsOnePlainLine(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() }) // after the parallel subtests
	addr := ln.Addr().String()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"default format", nil, "handoff: cannot start: --listen " + addr + ": "},
		{"console", []string{"--log-format", "console"}, "handoff: cannot start: --listen " + addr + ": "},
		{"json asked for", []string{"--log-format", "json"}, `{"level":"error"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			cmd := exec.Command(handoffBin, append([]string{"--listen", addr, "--workers", "1"}, tt.args...)...)
			cmd.Stderr = &stderr
			done := make(chan error, 1)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			go func() { done <- cmd.Wait() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				t.Fatalf("the master did not exit on a taken port (%v); stderr:\n%s", <-done, stderr.String())
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("exit: %v, want status 1", err)
			}
			lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n")
			if !strings.HasPrefix(lines[0], tt.want) || !strings.Contains(lines[0], "address already in use") {
				t.Errorf("stderr:\n%s\nwant a first line starting %q, saying the address is in use", stderr.String(), tt.want)
			}
			if tt.args == nil || tt.args[1] != "json" {
				if len(lines) != 1 {
					t.Errorf("stderr has %d lines, want 1:\n%s", len(lines), stderr.String())
				}
			}
		})
	}
}
