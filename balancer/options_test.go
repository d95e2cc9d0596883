package balancer_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
)

// Validate rejects what means nothing and names the field and the rule it
// breaks; zero values are the defaults, and valid. A heartbeat timeout
// must outlast the interval it times.
func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		opts  balancer.Options
		field string // "" for valid
		rule  string // "" for "must not be negative"
	}{
		{name: "zero", opts: balancer.Options{}},
		{name: "keep-alive off", opts: balancer.Options{KeepAlive: -1}},
		{name: "negative workers", opts: balancer.Options{Workers: -1}, field: "Workers"},
		{name: "negative shutdown timeout", opts: balancer.Options{ShutdownTimeout: -time.Second}, field: "ShutdownTimeout"},
		{name: "negative handoff timeout", opts: balancer.Options{HandoffTimeout: -1}, field: "HandoffTimeout"},
		{name: "negative reload timeout", opts: balancer.Options{ReloadTimeout: -1}, field: "ReloadTimeout"},
		{name: "negative reload concurrency", opts: balancer.Options{ReloadConcurrency: -1}, field: "ReloadConcurrency"},
		{name: "negative max unread", opts: balancer.Options{MaxUnread: -1}, field: "MaxUnread"},
		{name: "negative max pending", opts: balancer.Options{MaxPending: -1}, field: "MaxPending"},
		{name: "negative max conns", opts: balancer.Options{MaxConns: -1}, field: "MaxConns"},
		{name: "negative user timeout", opts: balancer.Options{TCPUserTimeout: -1}, field: "TCPUserTimeout"},
		{name: "all set", opts: balancer.Options{MaxRequests: 1, MaxLifetime: 1, MaxMemory: 1, Heartbeat: time.Second, HeartbeatTimeout: 2 * time.Second, MaxRestarts: 1, RestartWindow: 1}},
		{name: "heartbeat with its default timeout", opts: balancer.Options{Heartbeat: time.Second}},
		{name: "window without a limit is unused", opts: balancer.Options{RestartWindow: time.Hour}},
		{name: "negative max requests", opts: balancer.Options{MaxRequests: -1}, field: "MaxRequests"},
		{name: "negative lifetime", opts: balancer.Options{MaxLifetime: -1}, field: "MaxLifetime"},
		{name: "negative memory", opts: balancer.Options{MaxMemory: -1}, field: "MaxMemory"},
		{name: "negative heartbeat", opts: balancer.Options{Heartbeat: -1}, field: "Heartbeat"},
		{name: "negative heartbeat timeout", opts: balancer.Options{HeartbeatTimeout: -1}, field: "HeartbeatTimeout"},
		{name: "negative max restarts", opts: balancer.Options{MaxRestarts: -1}, field: "MaxRestarts"},
		{name: "negative window", opts: balancer.Options{RestartWindow: -1}, field: "RestartWindow"},
		{name: "socket options", opts: balancer.Options{Socket: balancer.SocketOptions{UnixMode: 0o660, UnixGroup: "0", Backlog: 16}}},
		{name: "negative backlog", opts: balancer.Options{Socket: balancer.SocketOptions{Backlog: -1}}, field: "Socket.Backlog"},
		{name: "unix mode past permission bits", opts: balancer.Options{Socket: balancer.SocketOptions{UnixMode: 0o4755}}, field: "Socket.UnixMode", rule: "must be permission bits only (0 to 0777)"},
		{name: "timeout without heartbeat", opts: balancer.Options{HeartbeatTimeout: time.Second}, field: "HeartbeatTimeout", rule: "must be 0 without a heartbeat interval"},
		{name: "a default timeout too short", opts: balancer.Options{Heartbeat: 10 * time.Millisecond}, field: "HeartbeatTimeout", rule: "must be at least 100ms"},
		{name: "a timeout too short", opts: balancer.Options{Heartbeat: 10 * time.Millisecond, HeartbeatTimeout: 50 * time.Millisecond}, field: "HeartbeatTimeout", rule: "must be at least 100ms"},
		{name: "the shortest timeout", opts: balancer.Options{Heartbeat: 10 * time.Millisecond, HeartbeatTimeout: 100 * time.Millisecond}},
		{name: "timeout equal to the interval", opts: balancer.Options{Heartbeat: time.Second, HeartbeatTimeout: time.Second}, field: "HeartbeatTimeout", rule: "must be longer than the heartbeat interval (1s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := tt.opts.Validate()
			if tt.field == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			rule := tt.rule
			if rule == "" {
				rule = "must not be negative"
			}
			var oe *balancer.OptionError
			if !errors.As(err, &oe) || oe.Field != tt.field || oe.Rule != rule {
				t.Fatalf("Validate() = %v, want an *OptionError for %s: %s", err, tt.field, rule)
			}
			if !strings.Contains(err.Error(), "balancer: Options."+tt.field+" "+rule) {
				t.Errorf("message %q", err)
			}
			if _, nerr := balancer.New(tt.opts); nerr == nil || nerr.Error() != err.Error() {
				t.Errorf("New: %v, want %v", nerr, err)
			}
		})
	}
}

func TestPolicyByName(t *testing.T) {
	t.Parallel()
	names := []string{balancer.PolicyRoundRobin, balancer.PolicyLeastLoaded, balancer.PolicyLeastRequests, balancer.PolicyIPHash}
	if got := balancer.PolicyNames(); !slices.Equal(got, names) {
		t.Errorf("PolicyNames() = %v, want %v", got, names)
	}
	for _, name := range names {
		if p, err := balancer.PolicyByName(name); err != nil || p == nil || p() == nil {
			t.Errorf("PolicyByName(%q): %v", name, err)
		}
	}
	if _, err := balancer.PolicyByName("rr"); err == nil || !strings.Contains(err.Error(), "round-robin, least-loaded, least-requests or ip-hash") {
		t.Errorf("PolicyByName(rr) = %v, want an error listing the names", err)
	}
}
