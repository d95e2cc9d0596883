package balancer_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/handoff-go/handoff/balancer"
)

// Validate rejects what means nothing and names the field; zero values
// are the defaults, and valid.
func TestOptionsValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		opts  balancer.Options
		field string // "" for valid
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
			var oe *balancer.OptionError
			if !errors.As(err, &oe) || oe.Field != tt.field {
				t.Fatalf("Validate() = %v, want an *OptionError for %s", err, tt.field)
			}
			if !strings.Contains(err.Error(), "balancer: Options."+tt.field+" must not be negative") {
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
