package worker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os/signal"
	"syscall"

	"github.com/handoff-go/handoff/worker"
)

// A program serves HTTP the usual way; under a handoff master its listener
// is fed by the master, and alone it is net.Listen's. SIGTERM, which the
// master sends to stop a worker, drains it.
func ExampleListen() {
	ln, err := worker.Listen("tcp", ":8000")
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from worker %d\n", worker.ID())
	})}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		_ = srv.Shutdown(context.Background())
	}()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		log.Fatal(err)
	}
}

// A worker talks to its master with JSON messages.
func ExampleMessages() {
	if !worker.IsWorker() {
		return
	}
	for m := range worker.Messages() {
		// Answer every message with its length.
		if err := worker.Send(map[string]int{"len": len(m)}); err != nil {
			log.Print(err)
		}
	}
}
