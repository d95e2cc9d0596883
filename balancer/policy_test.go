package balancer_test

import (
	"net/netip"
	"testing"

	"github.com/handoff-go/handoff/balancer"
)

// picks runs p over ws n times, with no change in load, and returns the
// IDs it chose.
func picks(p balancer.Policy, ws []balancer.WorkerLoad, n int) []int {
	var c balancer.Conn
	ids := make([]int, n)
	for i := range ids {
		ids[i] = ws[p.Pick(&c, ws)].ID
	}
	return ids
}

func TestLeastRequests(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		ws   []balancer.WorkerLoad
		want []int // the IDs of successive picks, the load unchanged
	}{
		{
			name: "ties rotate by id",
			ws:   []balancer.WorkerLoad{{ID: 2, Serving: true}, {ID: 5, Serving: true}, {ID: 9, Serving: true}},
			want: []int{2, 5, 9, 2},
		},
		{
			name: "of equal requests, fewer connections win",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 4, Serving: true, Busy: 1}, {ID: 2, Active: 2, Serving: true, Busy: 1}, {ID: 3, Active: 2, Serving: true, Busy: 1}},
			want: []int{2, 3, 2},
		},
		{
			name: "idle keep-alive connections weigh nothing",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 50, Serving: true, Idle: 50}, {ID: 2, Active: 1, Serving: true, Busy: 1}},
			want: []int{1, 1},
		},
		{
			name: "unread connections count as requests",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 2, Unread: 2, Serving: true}, {ID: 2, Active: 1, Serving: true, Busy: 1}},
			want: []int{2, 2},
		},
		{
			name: "connections read and not yet begun count as requests",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 3, Serving: true, Busy: 1}, {ID: 2, Active: 3, Serving: true, Busy: 1, Idle: 1}},
			want: []int{2, 2},
		},
		{
			name: "a worker that is not serving counts its connections",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 3, Busy: 0}, {ID: 2, Active: 8, Serving: true, Busy: 2, Idle: 6}},
			want: []int{2, 2},
		},
		{
			name: "not serving with fewer connections than requests elsewhere",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 1}, {ID: 2, Active: 3, Serving: true, Busy: 3}},
			want: []int{1, 1},
		},
		{
			name: "none serving is least-loaded",
			ws:   []balancer.WorkerLoad{{ID: 1, Active: 4}, {ID: 2, Active: 2}, {ID: 3, Active: 2}},
			want: []int{2, 3, 2},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got := picks(balancer.LeastRequests(), tt.ws, len(tt.want))
			for i := range got {
				if got[i] != tt.want[i] {
					t.Fatalf("picked %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// RoundRobin and LeastLoaded look at no connection: a nil *Conn is not
// theirs to read.
func TestPoliciesWithoutConn(t *testing.T) {
	t.Parallel()
	ws := []balancer.WorkerLoad{{ID: 1}, {ID: 2}}
	for _, p := range []balancer.Policy{balancer.RoundRobin(), balancer.LeastLoaded(), balancer.LeastRequests(), balancer.IPHash()} {
		if i := p.Pick(nil, ws); i != 0 {
			t.Errorf("%T picked %d first, want 0", p, i)
		}
	}
}

// clients is n distinct client addresses, IPv4 and IPv6 alternately.
func clients(n int) []netip.Addr {
	as := make([]netip.Addr, n)
	for i := range as {
		if i%2 == 0 {
			as[i] = netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		} else {
			as[i] = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 12: byte(i >> 24), 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
		}
	}
	return as
}

// slots is one candidate per slot, with ids counting up from firstID.
func slots(firstID int, ss ...int) []balancer.WorkerLoad {
	ws := make([]balancer.WorkerLoad, len(ss))
	for i, s := range ss {
		ws[i] = balancer.WorkerLoad{ID: firstID + i, Slot: s}
	}
	return ws
}

// slotOf is the slot IPHash picks for a client at port.
func slotOf(p balancer.Policy, ws []balancer.WorkerLoad, a netip.Addr, port uint16) int {
	c := balancer.Conn{Remote: netip.AddrPortFrom(a, port)}
	return ws[p.Pick(&c, ws)].Slot
}

// IPHash is sticky by IP, whatever the port and whatever the workers' ids,
// and spreads clients about evenly over the slots.
func TestIPHashSticksAndSpreads(t *testing.T) {
	t.Parallel()
	p := balancer.IPHash()
	as := clients(10000)
	ws := slots(1, 0, 1, 2, 3, 4)
	restarted := slots(40, 0, 1, 2, 3, 4) // every worker replaced
	per := map[int]int{}
	for _, a := range as {
		s := slotOf(p, ws, a, 1000)
		per[s]++
		if s2 := slotOf(p, ws, a, 2000); s2 != s {
			t.Fatalf("%v: slot %d from one port, %d from another", a, s, s2)
		}
		if s2 := slotOf(p, restarted, a, 1000); s2 != s {
			t.Fatalf("%v: slot %d, then %d once every worker was replaced", a, s, s2)
		}
	}
	for s, n := range per {
		if share := float64(n) / float64(len(as)); share < 0.17 || share > 0.23 {
			t.Errorf("slot %d has %.1f%% of the clients, want about 20%%: %v", s, 100*share, per)
		}
	}
	// An IPv4 client and its IPv4-mapped IPv6 address are one client.
	for _, a := range as[:100:100] {
		if a.Is4() && slotOf(p, ws, a, 1) != slotOf(p, ws, netip.AddrFrom16(a.As16()), 1) {
			t.Errorf("%v and its IPv4-mapped address go to different slots", a)
		}
	}
}

// A slot that goes away moves only its own clients, each to the next slot
// in its own order, and they all come back when it returns; a slot
// added takes only the clients it now wins.
func TestIPHashMovesOnlyTheShareOfASlot(t *testing.T) {
	t.Parallel()
	p := balancer.IPHash()
	as := clients(5000)
	all := slots(1, 0, 1, 2, 3, 4)
	without2 := slots(1, 0, 1, 3, 4)
	without2and3 := slots(1, 0, 1, 4)
	with5 := slots(1, 0, 1, 2, 3, 4, 5)
	moved, added := 0, 0
	for _, a := range as {
		s := slotOf(p, all, a, 1)
		down := slotOf(p, without2, a, 1)
		switch {
		case s != 2 && down != s:
			t.Fatalf("%v moved from slot %d to %d when slot 2 went down", a, s, down)
		case s == 2:
			moved++
			// Its next in order: where it goes when 2 and its
			// second choice are both down is its third, and so on.
			if third := slotOf(p, without2and3, a, 1); down != 3 && third != down {
				t.Fatalf("%v: second choice %d, but %d once slot 3 is down too", a, down, third)
			}
		}
		if back := slotOf(p, all, a, 1); back != s {
			t.Fatalf("%v: slot %d, and %d after slot 2 came back", a, s, back)
		}
		if grown := slotOf(p, with5, a, 1); grown != s {
			if grown != 5 {
				t.Fatalf("%v moved from slot %d to %d when slot 5 was added", a, s, grown)
			}
			added++
		}
	}
	if share := float64(moved) / float64(len(as)); share < 0.15 || share > 0.25 {
		t.Errorf("slot 2 had %.1f%% of the clients, want about 20%%", 100*share)
	}
	if share := float64(added) / float64(len(as)); share < 0.12 || share > 0.21 {
		t.Errorf("slot 5, added, took %.1f%% of the clients, want about 1/6", 100*share)
	}
}

// During a rolling restart the old and the new worker of a slot are both
// candidates: the new one, with the higher id, gets the slot's clients.
func TestIPHashPrefersTheNewWorkerOfASlot(t *testing.T) {
	t.Parallel()
	p := balancer.IPHash()
	ws := []balancer.WorkerLoad{{ID: 1, Slot: 0}, {ID: 2, Slot: 1}, {ID: 3, Slot: 0}}
	seen := map[int]bool{}
	for _, a := range clients(200) {
		id := ws[p.Pick(&balancer.Conn{Remote: netip.AddrPortFrom(a, 1)}, ws)].ID
		if id == 1 {
			t.Fatalf("%v went to the old worker of slot 0 while its new one listens", a)
		}
		seen[id] = true
	}
	if !seen[3] || !seen[2] {
		t.Errorf("clients went to %v, want both slots", seen)
	}
}

// Clients of a Unix socket have no address to hash: they rotate, rather
// than all going to one worker.
func TestIPHashRotatesClientsWithoutAddress(t *testing.T) {
	t.Parallel()
	got := picks(balancer.IPHash(), slots(1, 0, 1, 2), 4)
	if want := []int{1, 2, 3, 1}; got[0] != want[0] || got[1] != want[1] || got[2] != want[2] || got[3] != want[3] {
		t.Errorf("picked %v for clients without an address, want %v", got, want)
	}
}
