//go:build linux

package netnstest

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// onThread runs enter and then fn on a new goroutine locked to its OS
// thread, and then puts the thread back in the namespace it started in.
// enter switches the thread's network namespace (setns or unshare). The
// thread is unlocked only if switching back succeeded; otherwise the
// goroutine exits locked and the runtime ends the thread with it.
func onThread(enter func() error, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			// Nothing was switched: the thread is clean.
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: getting the thread's namespace: %w", err)
			return
		}
		err = enter()
		if err == nil && fn != nil {
			err = fn()
		}
		rerr := restore(orig)
		_ = orig.Close()
		if rerr != nil {
			errc <- errors.Join(err, fmt.Errorf("netnstest: restoring the thread's namespace (thread left locked): %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	return <-errc
}

// restore puts the calling thread back into orig, if it is not there
// already (a failed setns or unshare leaves it where it was, and setns
// needs privileges that an unprivileged caller lacks), and checks it.
func restore(orig netns.NsHandle) error {
	if cur, err := netns.Get(); err == nil {
		same := cur.Equal(orig)
		_ = cur.Close()
		if same {
			return nil
		}
	}
	return netns.Set(orig)
}

// newNamespace creates a network namespace and returns a handle that owns
// it; no thread is left in it.
func newNamespace() (netns.NsHandle, error) {
	ns := netns.None()
	err := onThread(func() error {
		var err error
		ns, err = netns.New()
		return err
	}, nil)
	if err != nil {
		if ns.IsOpen() {
			_ = ns.Close()
		}
		return netns.None(), err
	}
	return ns, nil
}

// inNamespace runs fn on a thread switched into ns.
func inNamespace(ns netns.NsHandle, fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("netnstest: entering %v: %w", ns, err)
		}
		return nil
	}, fn)
}

// socketIn reports an error unless the socket fd belongs to namespace ns.
// SIOCGSKNS returns a new fd for the socket's own namespace.
func socketIn(fd int, ns netns.NsHandle) error {
	nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS)
	if err != nil {
		return fmt.Errorf("netnstest: finding the socket's namespace: %w", os.NewSyscallError("ioctl SIOCGSKNS", err))
	}
	defer unix.Close(nsfd)
	if !netns.NsHandle(nsfd).Equal(ns) {
		return errors.New("netnstest: socket created outside the test namespace; refusing to use it")
	}
	return nil
}
