package proctest

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Stat returns the fields of /proc/PID/stat after the command's name:
// state, ppid, and so on; nil if there is no such process.
func Stat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(s[i+1:])
}

// Alive reports whether process pid exists and is not a zombie.
func Alive(pid int) bool {
	f := Stat(pid)
	return len(f) > 0 && f[0] != "Z"
}

// Parent returns the pid of process pid's parent, or -1 if there is no
// such process.
func Parent(pid int) int {
	f := Stat(pid)
	if len(f) < 2 {
		return -1
	}
	p, err := strconv.Atoi(f[1])
	if err != nil {
		return -1
	}
	return p
}

// Children lists the processes whose parent is process parent.
func Children(parent int) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if Parent(pid) == parent {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Stopped reports whether every thread of process pid is stopped (state
// T or t), as it is some time after kill(SIGSTOP) returns: the signal
// stops a thread running on another CPU only when that CPU takes it.
func Stopped(pid int) bool {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil || len(tasks) == 0 {
		return false
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, task.Name()))
		if err != nil {
			return false
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) || (s[i+2] != 'T' && s[i+2] != 't') {
			return false
		}
	}
	return true
}
