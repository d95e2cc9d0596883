//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/balancer"
	"github.com/rs/zerolog"
)

// cannotStart reports a failure to start, and returns the exit code, 1.
// It is one plain line on stderr, as a flag's error is, so that a person
// reads it first, unless --log-format json was asked for: then it is a log
// line, for a program reading the log.
func cannotStart(c *config, log zerolog.Logger, logOut *mutableWriter, err error) int {
	if c.logFormat == "json" {
		log.Error().Err(err).Msg("cannot start")
		return 1
	}
	logOut.muted.Store(true)
	fmt.Fprintf(os.Stderr, "handoff: cannot start: %v\n", err)
	return 1
}

// runMaster runs the master until it has shut down, and returns the exit
// code. Its loop owns every decision about the lifecycle; the slow steps
// (reload, upgrade, shutdown) run on goroutines that report back to it.
func runMaster(c *config) int {
	if c.masterProcs > 0 {
		runtime.GOMAXPROCS(c.masterProcs)
	}
	logOut := &mutableWriter{w: os.Stderr}
	log := newLoggerTo(c, logOut)
	// Catch signals before any worker exists, so none is missed.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT, syscall.SIGUSR2)
	defer signal.Stop(sigs)

	// Socket activation first: it reads fds 3 and up, and unsets
	// LISTEN_* so that neither the workers nor a new master see them.
	activated := activatedListeners(log)
	upg, err := newUpgrader(c.pidFile, c.upgradeTimeout)
	if err != nil {
		for _, a := range activated {
			_ = a.ln.Close()
		}
		return cannotStart(c, log, logOut, err)
	}
	notify := newNotifier(log)

	opts, err := masterOptions(c) // parseFlags has checked them
	var b *balancer.Balancer
	if err == nil {
		opts.Logger = log
		b, err = balancer.New(opts)
	}
	if err != nil {
		for _, a := range activated {
			_ = a.ln.Close()
		}
		stopUpgrader(upg)
		return cannotStart(c, log, logOut, err)
	}
	var draining atomic.Bool
	var admin *adminServer
	var adminLn net.Listener // held until ready, in a master started by an upgrade
	fail := func(err error) int {
		code := cannotStart(c, log, logOut, err)
		b.Kill()
		_ = b.Shutdown(context.Background())
		admin.stop()
		if adminLn != nil {
			_ = adminLn.Close()
		}
		stopUpgrader(upg)
		return code
	}
	serveAdminNow := func(ln net.Listener) {
		admin = serveAdmin(ln, adminHandler(balancerSource{b: b, draining: &draining}), c.adminMaxConns, log)
	}
	if c.admin != "" {
		ln, err := upg.Listen("tcp", c.admin)
		if err != nil {
			for _, a := range activated {
				_ = a.ln.Close()
			}
			return fail(fmt.Errorf("--admin %s: %w", c.admin, err))
		}
		if upg.HasParent() {
			// The old master answers on this socket until our workers
			// listen: a health check must not see our 503 meanwhile.
			adminLn = ln
		} else {
			serveAdminNow(ln)
		}
	}
	if err := openListeners(b, upg, opts.Socket, c.specs, activated, log); err != nil {
		return fail(err)
	}
	if err := b.Start(); err != nil {
		return fail(err)
	}
	log.Info().Int("pid", os.Getpid()).Int("workers", len(b.Workers())).Str("policy", c.policy).Strs("listen", c.listen).
		Bool("upgraded", upg.HasParent()).Msg("master running")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready := make(chan error, 1)
	go func() { ready <- b.WaitReady(ctx) }()
	parentExited := waitForParent(ctx, upg) // nil without one
	var (
		reloaded    = make(chan error, 1)
		upgraded    = make(chan error, 1)
		shutdownErr = make(chan error, 1)
		exit        = upg.Exit()
		delay       <-chan time.Time
		stopping    bool // shutting down, or handing over to a new master
		isReady     bool // the workers listened once
		reloading   bool
		upgrading   bool
	)
	status := func() string { return fmt.Sprintf("%d workers listening", b.Stats().Listening) }
	shutdown := func() {
		go func() { shutdownErr <- b.Shutdown(context.Background()) }()
		// tableflip's copies of the listening sockets (kept for an
		// upgrade) would keep the port in LISTEN for the whole drain, so
		// that new clients' connections hang until the master exits. With
		// them closed here and the balancer's own closed once its last
		// accept pass is done, a new connection is refused at once. After
		// an upgrade tableflip has closed them already; Stop is a no-op.
		upg.Stop()
	}
	for {
		select {
		case err := <-ready:
			ready = nil
			if err != nil {
				continue // shutting down before the workers listened
			}
			isReady = true
			if adminLn != nil {
				serveAdminNow(adminLn)
				adminLn = nil
			}
			if err := upg.Ready(); err != nil {
				log.Error().Err(err).Msg("telling the old master we are ready")
			}
			notify.ready(os.Getpid(), upg.HasParent(), status())
			log.Info().Msg("ready: workers listening")

		case <-parentExited:
			parentExited = nil

		case <-reloaded: // Reload logs its own failure
			reloading = false
			if !stopping && isReady {
				notify.ready(os.Getpid(), false, status())
			}

		case err := <-upgraded:
			upgrading = false
			if err != nil && !stopping {
				upgradeFailed(log, err)
				notify.ready(os.Getpid(), false, status())
			}

		case <-exit:
			exit = nil
			if stopping {
				continue // upg.Stop, for a SIGTERM during an upgrade
			}
			// The new master's workers listen: stop accepting, drain
			// ours and exit. The admin server stops first, so that health
			// checks only reach the new master, which answers 200.
			stopping = true
			log.Info().Msg("upgrade: the new master is ready; draining this one")
			admin.stop()
			draining.Store(true)
			cancel()
			shutdown()

		case <-delay:
			delay = nil
			log.Info().Msg("shutdown delay over; draining workers")
			shutdown()

		case err := <-shutdownErr:
			admin.stop()
			if adminLn != nil {
				_ = adminLn.Close()
			}
			stopUpgrader(upg)
			removePIDFile(c.pidFile)
			if err != nil {
				log.Error().Err(err).Msg("shutdown")
				return 1
			}
			st := b.Stats()
			log.Info().Int("pid", os.Getpid()).Uint64("accepted", st.Accepted).Uint64("dispatched", st.Dispatched).
				Uint64("redispatched", st.Redispatched).Uint64("dropped", st.Dropped).Msg("master exiting")
			return 0

		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP && !stopping && !reloading:
				reloading = true
				log.Info().Msg("SIGHUP: rolling restart")
				notify.reloading("rolling restart")
				go func() { reloaded <- b.Reload(ctx) }()
			case sig == syscall.SIGUSR2 && !isReady:
				log.Warn().Msg("SIGUSR2 before the workers listen: no upgrade")
			case sig == syscall.SIGUSR2 && parentExited != nil:
				log.Warn().Msg("SIGUSR2 while the previous master still drains: no upgrade")
			case sig == syscall.SIGUSR2 && !stopping && !upgrading:
				upgrading = true
				log.Info().Msg("SIGUSR2: upgrading the master")
				notify.reloading("upgrading the master")
				go func() { upgraded <- upg.Upgrade() }()
			case sig == syscall.SIGHUP || sig == syscall.SIGUSR2:
				log.Info().Str("signal", sig.String()).Msg("busy; signal ignored")
			case !stopping:
				stopping = true
				draining.Store(true)
				cancel()
				notify.stopping("draining")
				if upgrading {
					upg.Stop() // kills the new master before it takes over
				}
				if c.shutdownDelay > 0 {
					log.Info().Str("signal", sig.String()).Str("shutdown_delay", c.shutdownDelay.String()).
						Msg("unhealthy now; accepting until the shutdown delay ends; send again to stop at once")
					delay = time.After(c.shutdownDelay)
				} else {
					log.Info().Str("signal", sig.String()).Msg("draining workers; send again to stop at once")
					shutdown()
				}
			default:
				log.Warn().Str("signal", sig.String()).Msg("stopping at once")
				b.Kill()
				if delay != nil {
					delay = nil
					shutdown()
				}
			}
		}
	}
}
