//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync/atomic"
	"testing"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// streamLen is how many messages each Count stream asks for: about 40ms
// of stream at countInterval.
const streamLen = 20

// pidOf reads the worker's pid from response header metadata.
func pidOf(md metadata.MD) (int, error) {
	v := md.Get(mdPID)
	if len(v) != 1 {
		return 0, fmt.Errorf("header %q: %q, want one pid", mdPID, v)
	}
	return strconv.Atoi(v[0])
}

// unaryEcho calls compat.Echo/Echo and checks the answer.
func unaryEcho(cc *grpc.ClientConn, i int64) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	want := "message " + strconv.FormatInt(i, 10)
	out := new(wrapperspb.StringValue)
	var md metadata.MD
	if err := cc.Invoke(ctx, echoMethod, wrapperspb.String(want), out, grpc.Header(&md)); err != nil {
		return 0, fmt.Errorf("Echo: %w", err)
	}
	if out.GetValue() != want {
		return 0, fmt.Errorf("Echo answered %q, want %q", out.GetValue(), want)
	}
	return pidOf(md)
}

// healthCheck calls grpc.health.v1.Health/Check for compat.Echo.
func healthCheck(cc *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	resp, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: echoServiceName})
	if err != nil {
		return fmt.Errorf("health Check: %w", err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health Check: %v, want SERVING", resp.GetStatus())
	}
	return nil
}

// countStream calls compat.Echo/Count(streamLen) and checks that every
// message came, in order, then the end of the stream with status OK. It
// adds the messages received to msgs.
func countStream(cc *grpc.ClientConn, msgs *atomic.Int64) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	s, err := cc.NewStream(ctx, &countStreamDesc, countMethod)
	if err != nil {
		return 0, fmt.Errorf("Count: %w", err)
	}
	if err := s.SendMsg(wrapperspb.UInt32(streamLen)); err != nil {
		return 0, fmt.Errorf("Count: sending: %w", err)
	}
	if err := s.CloseSend(); err != nil {
		return 0, fmt.Errorf("Count: CloseSend: %w", err)
	}
	for want := uint32(0); ; want++ {
		m := new(wrapperspb.UInt32Value)
		err := s.RecvMsg(m)
		if errors.Is(err, io.EOF) {
			if want != streamLen {
				return 0, fmt.Errorf("Count: ended after %d messages, want %d", want, streamLen)
			}
			break
		}
		if err != nil {
			return 0, fmt.Errorf("Count: after %d messages: %w", want, err)
		}
		if m.GetValue() != want {
			return 0, fmt.Errorf("Count: message %d is %d", want, m.GetValue())
		}
		msgs.Add(1)
	}
	md, err := s.Header()
	if err != nil {
		return 0, err
	}
	return pidOf(md)
}

// TestGRPC: grpc-go on both sides, grpc.Server.Serve on the handed-off
// listener and GracefulStop when it closes: unary calls (compat.Echo and
// the standard health Check) and server-streaming calls, over two client
// connections, across a rolling restart.
func TestGRPC(t *testing.T) {
	m := startMaster(t, "--grpc", "127.0.0.1:0")
	m.ownSignals = true // the gRPC server's own signal.NotifyContext
	var conns []*grpc.ClientConn
	for range 2 {
		cc, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		conns = append(conns, cc)
	}
	var unary, health, streams tally
	var msgs atomic.Int64
	progress := func() int64 { return unary.ok.Load() + streams.ok.Load() }
	r := acrossRestart(t, m, 200, 200, progress, func(stop <-chan struct{}, g *errgroup.Group) {
		load(g, 3, 200000, stop, &unary, func(w int, i int64) (int, error) {
			if i%4 == 0 {
				health.add(0, healthCheck(conns[w%2]))
			}
			return unaryEcho(conns[w%2], i)
		})
		load(g, 2, 20000, stop, &streams, func(w int, i int64) (int, error) {
			return countStream(conns[w%2], &msgs)
		})
	})
	unary.check(t, "grpc unary Echo", r)
	health.check(t, "grpc health Check", r)
	streams.check(t, "grpc streams", r)
	t.Logf("grpc: unary Echo %s; health Check %d ok, %d failed; server streams %s, %d messages; %v",
		unary.figures(r), health.ok.Load(), health.failed.Load(), streams.figures(r), msgs.Load(), r)
}
