//go:build linux

package balancer

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
)

// Run is the master's main loop for a program that embeds the balancer,
// with the signal handling of the handoff command. It starts the workers
// (unless Start was called already) and returns once the balancer has
// shut down:
//
//   - SIGHUP rolls: Reload replaces every worker with no failed request.
//     A SIGHUP during a reload is ignored, and logged.
//   - SIGTERM or SIGINT shuts down: stop accepting (new connections are
//     refused at once), drain every worker, wait for them to exit.
//   - A second SIGTERM or SIGINT kills the workers at once.
//   - ctx ending shuts down, as SIGTERM does.
//
// The signals are caught from before the first worker starts until Run
// returns. Run returns nil after a clean shutdown, Start's error if the
// workers could not start (the balancer is then shut down), or Shutdown's.
func (b *Balancer) Run(ctx context.Context) error {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if err := b.Start(); err != nil && !errors.Is(err, ErrStarted) {
		if errors.Is(err, ErrClosed) { // shut down by other code before it started
			return b.Shutdown(context.Background())
		}
		b.Kill()
		_ = b.Shutdown(context.Background())
		return err
	}
	reloadCtx, cancelReload := context.WithCancel(context.Background())
	defer cancelReload()
	reloaded := make(chan struct{}, 1)
	reloading := false
	shutdown := make(chan error, 1)
	stopping := false
	stop := func() {
		stopping = true
		cancelReload()
		go func() { shutdown <- b.Shutdown(context.Background()) }()
	}
	done := ctx.Done()
	for {
		select {
		case <-done:
			done = nil
			if !stopping {
				b.log.Info().Msg("context done: draining workers")
				stop()
			}
		case <-reloaded:
			reloading = false
		case err := <-shutdown:
			return err
		case <-b.Done(): // shut down by someone else
			return b.Shutdown(context.Background())
		case sig := <-sigs:
			switch {
			case sig == syscall.SIGHUP && (stopping || reloading):
				b.log.Info().Str("signal", sig.String()).Msg("busy; signal ignored")
			case sig == syscall.SIGHUP:
				reloading = true
				b.log.Info().Msg("SIGHUP: rolling restart")
				go func() {
					_ = b.Reload(reloadCtx) // Reload logs its own failure
					reloaded <- struct{}{}
				}()
			case !stopping:
				b.log.Info().Str("signal", sig.String()).Msg("draining workers; send again to stop at once")
				stop()
			default:
				b.log.Warn().Str("signal", sig.String()).Msg("stopping at once")
				b.Kill()
			}
		}
	}
}
