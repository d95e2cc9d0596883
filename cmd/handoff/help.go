//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// helpWidth is the widest line --help writes.
const helpWidth = 100

// helpIndent is the column where a flag's description starts.
const helpIndent = 28

// helpFlag is one flag as --help shows it.
type helpFlag struct {
	name string // the flag's name
	arg  string // what its value is called, or "" for a bool flag
}

// helpGroups orders the flags of --help by topic. Every flag is in exactly
// one group (TestHelpGroupsEveryFlag).
var helpGroups = []struct {
	title string
	flags []helpFlag
}{
	{"Listening", []helpFlag{{"listen", "ADDR"}, {"unix-mode", "MODE"}, {"unix-group", "GROUP"}, {"backlog", "N"},
		{"tcp-keepalive", "D"}, {"tcp-user-timeout", "D"}}},
	{"Workers", []helpFlag{{"workers", "N"}, {"user", "NAME"}, {"cpu-affinity", ""}, {"master-procs", "N"}, {"max-conn-age", "D"},
		{"idle-grace", "D"}}},
	{"Policies and queues", []helpFlag{{"policy", "P"}, {"max-conns", "N"}, {"max-pending", "N"}, {"max-unread", "N"}}},
	{"Lifecycle", []helpFlag{{"shutdown-timeout", "D"}, {"shutdown-delay", "D"}, {"handoff-timeout", "D"},
		{"reload-concurrency", "N"}, {"upgrade-timeout", "D"}, {"pid-file", "FILE"}}},
	{"Fleet: recycling and liveness", []helpFlag{{"max-requests", "N"}, {"max-lifetime", "D"}, {"max-memory", "SIZE"},
		{"heartbeat", "D"}, {"heartbeat-timeout", "D"}, {"max-restarts", "N"}, {"restart-window", "D"}}},
	{"Admin", []helpFlag{{"admin", "ADDR"}, {"admin-max-conns", "N"}}},
	{"Logging", []helpFlag{{"log-format", "F"}, {"log-level", "L"}}},
	{"Other", []helpFlag{{"version", ""}, {"help", ""}}},
}

const helpIntro = `Usage: handoff [flags] [-- COMMAND [ARG...]]
       handoff status [--admin HOST:PORT] [--watch] [--json]

handoff is a master process that accepts every connection on its ports and
hands each one to a worker process, as --policy says. Without a COMMAND the
workers run the built-in demo HTTP server ("hello world", header X-Worker-Id,
?delay=250ms to answer slowly, ?grow=100MiB to keep that much more memory
resident, up to 1GiB in all, for --max-memory). With one, every worker runs
COMMAND, a program that uses github.com/handoff-go/handoff/worker.

Signals:
  SIGHUP           replace every worker, one by one, with no failed request;
                   restart the slots that --max-restarts stopped
  SIGUSR2          upgrade the master itself: start the binary on disk, hand it
                   the listening sockets, drain and exit once its workers listen
  SIGTERM, SIGINT  drain the workers (after --shutdown-delay) and exit 0;
                   a second one kills them at once

Under systemd, sockets passed by socket activation (LISTEN_FDS) serve the
--listen addresses they are bound to or, with --listen NAME=ADDR, the
FileDescriptorName= NAME; the master reports READY=1, RELOADING=1 and
STOPPING=1 to NOTIFY_SOCKET.
`

const helpExamples = `
Examples:
  handoff                                  the demo on :8000, one worker per CPU
  handoff --listen :8080 --workers 4 -- ./server -config prod.toml
  handoff --listen unix:/run/app.sock --admin 127.0.0.1:9090 --max-requests 10000 -- ./server
  handoff status --admin 127.0.0.1:9090 --watch   the fleet behind that admin port, every second
`

// writeHelp writes the usage that --help asks for.
func writeHelp(w io.Writer, fs *flag.FlagSet) {
	var b strings.Builder
	b.WriteString(helpIntro)
	for _, g := range helpGroups {
		fmt.Fprintf(&b, "\n%s:\n", g.title)
		for _, hf := range g.flags {
			if hf.name == "help" {
				writeHelpFlag(&b, "--help", "print this help and exit")
				continue
			}
			f := fs.Lookup(hf.name)
			if f == nil {
				continue // TestHelpGroupsEveryFlag fails on it
			}
			head := "--" + f.Name
			if hf.arg != "" {
				head += " " + hf.arg
			}
			desc := f.Usage
			if d := f.DefValue; d != "" && d != "0" && d != "0s" && d != "false" {
				desc += " (default " + d + ")"
			}
			writeHelpFlag(&b, head, desc)
		}
	}
	b.WriteString(helpExamples)
	_, _ = io.WriteString(w, b.String())
}

// writeHelpFlag writes one flag's head and its description, wrapped.
func writeHelpFlag(b *strings.Builder, head, desc string) {
	line := "  " + head
	if len(line) >= helpIndent-1 {
		b.WriteString(line + "\n")
		line = ""
	}
	for _, word := range strings.Fields(desc) {
		if line != "" && len(line) >= helpIndent && len(line)+1+len(word) > helpWidth {
			b.WriteString(line + "\n")
			line = ""
		}
		if len(line) < helpIndent {
			line += strings.Repeat(" ", helpIndent-len(line)) + word
		} else {
			line += " " + word
		}
	}
	b.WriteString(line + "\n")
}

// flagError is a bad flag value, said as a person can act on it.
type flagError struct {
	flag, value, want string
}

func (e *flagError) Error() string {
	return fmt.Sprintf("--%s %s: %s", e.flag, e.value, e.want)
}

// checkedValue wraps a flag's Value so that a value it refuses is kept,
// with what the flag wants, for parseFlagsTo's one-line error.
type checkedValue struct {
	flag.Value
	name string
	bad  **flagError // where Set keeps the first refused value
}

func (v checkedValue) Set(s string) error {
	err := v.Value.Set(s)
	if err != nil && *v.bad == nil {
		*v.bad = &flagError{flag: v.name, value: s, want: wantOf(v.Value, s, err)}
	}
	return err
}

// IsBoolFlag keeps a bool flag one that needs no value.
func (v checkedValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// wantOf says what a flag of v's kind wants, with an example.
func wantOf(v flag.Value, s string, err error) string {
	if g, ok := v.(flag.Getter); ok {
		switch g.Get().(type) {
		case time.Duration:
			return "want a duration with a unit, such as 5s, 250ms or 1m30s"
		case int, int64, uint, uint64:
			return "want a whole number, such as 4"
		case bool:
			return "want true or false, or the flag alone"
		}
	}
	return strings.TrimPrefix(err.Error(), strconv.Quote(s)+": ")
}

// wrapFlagValues makes every flag of fs a checkedValue.
func wrapFlagValues(fs *flag.FlagSet, bad **flagError) {
	fs.VisitAll(func(f *flag.Flag) {
		f.Value = checkedValue{Value: f.Value, name: f.Name, bad: bad}
	})
}

// parseError turns the flag package's error into one line that names the
// flag: the refused value kept by checkedValue, an unknown flag, or a
// flag with its value missing.
func parseError(err error, bad *flagError) error {
	if bad != nil {
		return bad
	}
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("unknown flag --%s", strings.TrimPrefix(name, "-"))
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Errorf("--%s needs a value", strings.TrimPrefix(name, "-"))
	}
	return err
}

// errVersion is parseFlags' answer to --version, which it has printed.
var errVersion = errors.New("version printed")

// version is the CLI's version, set at link time with
// -ldflags "-X main.version=v1.2.3"; otherwise it is read from the build
// information (the module version of go install ...@v1.2.3, or the VCS
// revision of a build in a checkout).
var version string

// versionString says which handoff this is.
func versionString() string {
	v := version
	var rev, dirty string
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
	}
	if v == "" {
		v = "(devel)"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev != "" && !strings.Contains(v, rev) {
		v += " " + rev + dirty
	}
	return fmt.Sprintf("handoff %s %s %s/%s", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
