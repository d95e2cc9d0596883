//go:build linux

package balancer

import (
	"io/fs"
	"math"
	"os"
	"slices"
	"testing"
)

// files is a fake file system for cgroupCPULimit: path → contents.
type files map[string]string

func (f files) read(path string) ([]byte, error) {
	s, ok := f[path]
	if !ok {
		return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
	}
	return []byte(s), nil
}

// The mountinfo of this kind of machine: cgroup v1 controllers, one
// each, and a v2 hierarchy with none beside them.
const hybridMounts = `30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:29 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const v2Mounts = `25 1 0:22 / / rw - ext4 /dev/root rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
`

func TestCgroupCPULimit(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name  string
		files files
		want  float64 // 0: no limit
	}{
		{name: "v1 leaf", files: files{
			"/proc/self/cgroup":                        "4:memory:/x\n1:cpu:/job\n0::/\n",
			"/proc/self/mountinfo":                     hybridMounts,
			"/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us":  "150000\n",
			"/sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
		}, want: 1.5},
		{name: "v1 no quota", files: files{
			"/proc/self/cgroup":                        "1:cpu:/job\n0::/\n",
			"/proc/self/mountinfo":                     hybridMounts,
			"/sys/fs/cgroup/cpu/job/cpu.cfs_quota_us":  "-1\n",
			"/sys/fs/cgroup/cpu/job/cpu.cfs_period_us": "100000\n",
		}},
		{name: "v1 comounted cpu,cpuacct", files: files{
			"/proc/self/cgroup":                              "3:cpu,cpuacct:/a\n",
			"/proc/self/mountinfo":                           "31 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n",
			"/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_quota_us":  "200000",
			"/sys/fs/cgroup/cpu,cpuacct/a/cpu.cfs_period_us": "100000",
		}, want: 2},
		{name: "v1 nested, the parent is tighter", files: files{
			"/proc/self/cgroup":                            "1:cpu:/pod/box\n",
			"/proc/self/mountinfo":                         hybridMounts,
			"/sys/fs/cgroup/cpu/pod/box/cpu.cfs_quota_us":  "-1",
			"/sys/fs/cgroup/cpu/pod/box/cpu.cfs_period_us": "100000",
			"/sys/fs/cgroup/cpu/pod/cpu.cfs_quota_us":      "50000",
			"/sys/fs/cgroup/cpu/pod/cpu.cfs_period_us":     "100000",
			"/sys/fs/cgroup/cpu/cpu.cfs_quota_us":          "-1",
			"/sys/fs/cgroup/cpu/cpu.cfs_period_us":         "100000",
		}, want: 0.5},
		{name: "v1 in a cgroup namespace: the mount's root is the cgroup", files: files{
			"/proc/self/cgroup":                    "1:cpu:/docker/abc\n",
			"/proc/self/mountinfo":                 "31 30 0:28 /docker/abc /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n",
			"/sys/fs/cgroup/cpu/cpu.cfs_quota_us":  "300000",
			"/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000",
		}, want: 3},
		{name: "v1 outside the namespace", files: files{
			"/proc/self/cgroup":    "1:cpu:/../other\n",
			"/proc/self/mountinfo": hybridMounts,
		}},
		{name: "v2 QUOTA PERIOD", files: files{
			"/proc/self/cgroup":                               "0::/system.slice/app.service\n",
			"/proc/self/mountinfo":                            v2Mounts,
			"/sys/fs/cgroup/system.slice/app.service/cpu.max": "100000 100000\n",
		}, want: 1},
		{name: "v2 max", files: files{
			"/proc/self/cgroup":        "0::/a\n",
			"/proc/self/mountinfo":     v2Mounts,
			"/sys/fs/cgroup/a/cpu.max": "max 100000\n",
		}},
		{name: "v2 nested, the parent is tighter; the root has no cpu.max", files: files{
			"/proc/self/cgroup":          "0::/a/b\n",
			"/proc/self/mountinfo":       v2Mounts,
			"/sys/fs/cgroup/a/b/cpu.max": "400000 100000",
			"/sys/fs/cgroup/a/cpu.max":   "250000 100000",
		}, want: 2.5},
		{name: "v2 only, without the cpu controller in v1", files: files{
			"/proc/self/cgroup":                "0::/a\n",
			"/proc/self/mountinfo":             hybridMounts,
			"/sys/fs/cgroup/unified/a/cpu.max": "200000 100000",
		}, want: 2},
		{name: "v2 escaped mount point", files: files{
			"/proc/self/cgroup":     "0::/a\n",
			"/proc/self/mountinfo":  `30 25 0:26 / /mnt/cg\040two rw - cgroup2 cgroup2 rw` + "\n",
			"/mnt/cg two/a/cpu.max": "100000 50000",
		}, want: 2},
		{name: "malformed cpu.max", files: files{
			"/proc/self/cgroup":        "0::/a\n",
			"/proc/self/mountinfo":     v2Mounts,
			"/sys/fs/cgroup/a/cpu.max": "lots",
		}},
		{name: "missing limit files", files: files{
			"/proc/self/cgroup":    "1:cpu:/job\n",
			"/proc/self/mountinfo": hybridMounts,
		}},
		{name: "no mountinfo", files: files{"/proc/self/cgroup": "1:cpu:/job\n"}},
		{name: "no cgroup file", files: files{}},
		{name: "no cpu hierarchy mounted", files: files{
			"/proc/self/cgroup":    "1:cpu:/job\n",
			"/proc/self/mountinfo": v2Mounts,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, ok := cgroupCPULimit(tt.files.read)
			if ok != (tt.want != 0) || math.Abs(got-tt.want) > 1e-9 {
				t.Fatalf("cgroupCPULimit = %v, %v; want %v", got, ok, tt.want)
			}
		})
	}
}

func TestGOMAXPROCSShare(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ cpus, workers, want int }{
		{1, 1, 1}, {2, 2, 1}, {2, 1, 2}, {8, 3, 2}, {2, 5, 1}, {4, 0, 4},
	} {
		if got := gomaxprocsShare(tt.cpus, tt.workers); got != tt.want {
			t.Errorf("gomaxprocsShare(%d, %d) = %d, want %d", tt.cpus, tt.workers, got, tt.want)
		}
	}
}

// CPUAffinity pins only when the CPUs the master may run on are all its
// own (no quota below them), and a pinned worker's share is one CPU.
func TestPlanCPUsPinsOnlyCPUsThatAreOurs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		affinity bool
		workers  int
		limit    int
		allowed  []int
		pin      []int
		share    int
		unpinned bool
	}{
		{name: "off", workers: 2, limit: 8, allowed: []int{0, 1, 2, 3, 4, 5, 6, 7}, share: 4},
		{name: "a cpuset of 4", affinity: true, workers: 2, limit: 4, allowed: []int{2, 3, 4, 5}, pin: []int{2, 3, 4, 5}, share: 1},
		{name: "a quota of 2 on 48 CPUs", affinity: true, limit: 2, allowed: make([]int, 48), share: 1, unpinned: true},
		{name: "a quota of 4 on 8 CPUs, 2 workers", affinity: true, workers: 2, limit: 4, allowed: make([]int, 8), share: 2, unpinned: true},
		{name: "no mask", affinity: true, workers: 1, limit: 2, share: 2, unpinned: true},
	} {
		p := planCPUsFor(Options{Workers: tt.workers, CPUAffinity: tt.affinity}, tt.limit, tt.allowed)
		if !slices.Equal(p.pin, tt.pin) || p.share != tt.share || (p.unpinned != "") != tt.unpinned {
			t.Errorf("%s: pin %v, share %d, unpinned %q; want pin %v, share %d, unpinned %v", tt.name, p.pin, p.share, p.unpinned, tt.pin, tt.share, tt.unpinned)
		}
	}
}

// The GOMAXPROCS share is not set over the user's: in Options.Env, in
// Fork's env, or in the master's environment.
func TestGOMAXPROCSLeftToTheUser(t *testing.T) {
	b := &Balancer{cpus: cpuPlan{share: 3}}
	if got := b.gomaxprocsFor(&slot{}); got != 3 && os.Getenv("GOMAXPROCS") == "" {
		t.Errorf("no GOMAXPROCS anywhere: %d, want the share, 3", got)
	}
	b.opts.Env = []string{"A=1", "GOMAXPROCS=7"}
	if got := b.gomaxprocsFor(&slot{}); got != 0 {
		t.Errorf("GOMAXPROCS in Options.Env: %d, want 0", got)
	}
	b.opts.Env = nil
	if got := b.gomaxprocsFor(&slot{env: []string{"GOMAXPROCS=2"}}); got != 0 {
		t.Errorf("GOMAXPROCS in the slot's env: %d, want 0", got)
	}
	t.Setenv("GOMAXPROCS", "5")
	if got := b.gomaxprocsFor(&slot{}); got != 0 {
		t.Errorf("GOMAXPROCS in the master's environment: %d, want 0", got)
	}
}
