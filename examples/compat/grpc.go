package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/handoff-go/handoff/worker"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// The compat.Echo service, written out by hand instead of generated from
// a .proto, with the well-known wrapper messages:
//
//	service Echo {
//	  rpc Echo(google.protobuf.StringValue) returns (google.protobuf.StringValue);
//	  rpc Count(google.protobuf.UInt32Value) returns (stream google.protobuf.UInt32Value);
//	}
//
// Echo answers its request; Count(n) sends 0, 1, ..., n-1, countInterval
// apart, so that streams are in flight when a drain begins. Both send
// the worker's pid in the response header metadata mdPID.
const (
	echoServiceName = "compat.Echo"
	echoMethod      = "/compat.Echo/Echo"
	countMethod     = "/compat.Echo/Count"
	mdPID           = "worker-pid"
	countInterval   = 2 * time.Millisecond
	maxCount        = 10000
)

// countStreamDesc describes Count to a client's NewStream.
var countStreamDesc = grpc.StreamDesc{StreamName: "Count", ServerStreams: true}

// echoServer implements compat.Echo.
type echoServer interface {
	echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error)
	count(in *wrapperspb.UInt32Value, stream grpc.ServerStream) error
}

var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: echoServiceName,
	HandlerType: (*echoServer)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			in := new(wrapperspb.StringValue)
			if err := dec(in); err != nil {
				return nil, err
			}
			if interceptor == nil {
				return srv.(echoServer).echo(ctx, in)
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: echoMethod}
			return interceptor(ctx, in, info, func(ctx context.Context, req any) (any, error) {
				return srv.(echoServer).echo(ctx, req.(*wrapperspb.StringValue))
			})
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "Count",
		ServerStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			in := new(wrapperspb.UInt32Value)
			if err := stream.RecvMsg(in); err != nil {
				return err
			}
			return srv.(echoServer).count(in, stream)
		},
	}},
}

// echoImpl is the server's echoServer.
type echoImpl struct {
	pid metadata.MD // the header every response carries
}

func (e echoImpl) echo(ctx context.Context, in *wrapperspb.StringValue) (*wrapperspb.StringValue, error) {
	if err := grpc.SetHeader(ctx, e.pid); err != nil {
		return nil, err
	}
	return wrapperspb.String(in.GetValue()), nil
}

func (e echoImpl) count(in *wrapperspb.UInt32Value, stream grpc.ServerStream) error {
	n := in.GetValue()
	if n > maxCount {
		return status.Errorf(codes.InvalidArgument, "count %d: at most %d", n, maxCount)
	}
	if err := stream.SendHeader(e.pid); err != nil {
		return err
	}
	for i := range n {
		if i > 0 {
			time.Sleep(countInterval)
		}
		if err := stream.SendMsg(wrapperspb.UInt32(i)); err != nil {
			return err
		}
	}
	return nil
}

// serveGRPC serves compat.Echo and the standard health service on
// c.grpc, with grpc.Server.Serve on the handed-off listener. It stops
// with GracefulStop (GOAWAY, then wait for the RPCs in flight) when the
// listener closes, as the master's Disconnect does, or on SIGTERM or
// SIGINT; GracefulStop is bounded by c.drainTimeout, then Stop.
func serveGRPC(c config) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := worker.Listen("tcp", c.grpc)
	if err != nil {
		return err
	}
	gs := grpc.NewServer()
	gs.RegisterService(&echoServiceDesc, echoImpl{pid: metadata.Pairs(mdPID, strconv.Itoa(os.Getpid()))})
	hs := health.NewServer()
	hs.SetServingStatus(echoServiceName, healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(ln) }()
	var serveErr error
	select {
	case serveErr = <-served: // the listener closed
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		gs.GracefulStop() // closes ln too; Serve returns
	}()
	t := time.NewTimer(c.drainTimeout)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		<-stopped
		return fmt.Errorf("--grpc %s: drain timed out after %v; RPCs in flight were cut", c.grpc, c.drainTimeout)
	}
	if serveErr != nil && !errors.Is(serveErr, grpc.ErrServerStopped) && !errors.Is(serveErr, net.ErrClosed) {
		return fmt.Errorf("--grpc %s: %w", c.grpc, serveErr)
	}
	return nil
}
