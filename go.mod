module github.com/handoff-go/handoff

go 1.26.0

// The library packages (scm, ipc, balancer, worker) need only
// golang.org/x/sys and github.com/rs/zerolog: `go list -deps ./scm ./ipc
// ./balancer ./worker` names no other module. The rest is the CLI's
// (cmd/handoff: tableflip, go-systemd, go-proxyproto, prometheus, x/net's
// netutil), the tests' (goleak, x/sync's errgroup, netlink and netns for
// the namespace tests) and examples/proxyproto's (go-proxyproto). The
// benchmark (cmd/handoff-bench) and the compatibility suite
// (examples/compat) are modules of their own.
require (
	github.com/cloudflare/tableflip v1.2.3
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/pires/go-proxyproto v0.15.0
	github.com/prometheus/client_golang v1.25.0
	github.com/prometheus/client_model v0.6.3
	github.com/prometheus/common v0.72.0
	github.com/rs/zerolog v1.35.1
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	go.uber.org/goleak v1.3.0
	golang.org/x/net v0.62.0
	golang.org/x/sync v0.25.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/kylelemons/godebug v1.1.0 // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
