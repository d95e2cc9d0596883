package proctest

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// EnvChild holds, in a test binary that StartChild re-executed, the mode
// it was given: what the test it runs should do as the child.
const EnvChild = "HANDOFF_TEST_CHILD"

// ChildMode returns the mode StartChild gave this process, or "" in a test
// binary that go test started.
func ChildMode() string { return os.Getenv(EnvChild) }

// StartChild re-executes the test binary to run test in a child process,
// with EnvChild=mode and env in its environment and files as its fds from
// 3 on (a nil file leaves its number closed). Its output goes to a file,
// not a bytes.Buffer: reading a buffer that exec's copying goroutine
// fills before Wait would be a data race. The files are closed once the
// child has started. wait waits for the child and checks that it ran test
// and passed; at cleanup a child not waited for is killed. output returns
// what the child has written so far.
func StartChild(tb testing.TB, test, mode string, files []*os.File, env ...string) (cmd *exec.Cmd, wait func(), output func() string) {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := os.Create(tb.TempDir() + "/child.out")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = out.Close() })
	output = func() string {
		b, _ := os.ReadFile(out.Name())
		return string(b)
	}
	cmd = exec.Command(exe, "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), EnvChild+"="+mode, "GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, env...)
	cmd.ExtraFiles = files
	cmd.Stdout, cmd.Stderr = out, out
	err = cmd.Start()
	for _, f := range files {
		if f != nil {
			_ = f.Close()
		}
	}
	if err != nil {
		tb.Fatal(err)
	}
	waited := false
	tb.Cleanup(func() {
		if !waited {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	wait = func() {
		tb.Helper()
		waited = true
		if err := cmd.Wait(); err != nil {
			tb.Fatalf("child: %v\n%s", err, output())
		}
		if !strings.Contains(output(), "--- PASS: "+test) {
			tb.Fatalf("child did not run the test:\n%s", output())
		}
	}
	return cmd, wait, output
}

// InChild runs child in a child process: the test binary re-executed by
// StartChild to run test alone, with test as its mode. Called from the
// test function test, it starts that child and waits for it to pass; in
// the child it runs child(t) instead. It is for tests that must change
// their process, such as its fd limit, without disturbing the others.
func InChild(t *testing.T, test string, child func(t *testing.T)) {
	t.Helper()
	if ChildMode() == test {
		child(t)
		return
	}
	_, wait, _ := StartChild(t, test, test, nil)
	wait()
}
