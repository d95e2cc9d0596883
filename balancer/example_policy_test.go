package balancer_test

import (
	"fmt"

	"github.com/handoff-go/handoff/balancer"
)

// PolicyByName turns a policy's name, from a flag say, into
// Options.Policy.
func ExamplePolicyByName() {
	newPolicy, err := balancer.PolicyByName(balancer.PolicyLeastLoaded)
	if err != nil {
		panic(err)
	}
	p := newPolicy()
	workers := []balancer.WorkerLoad{{ID: 1, Active: 3}, {ID: 2, Active: 1}, {ID: 3, Active: 1}}
	for range 3 {
		i := p.Pick(workers)
		fmt.Println("worker", workers[i].ID)
		workers[i].Active++
	}
	_, err = balancer.PolicyByName("random")
	fmt.Println(err)
	// Output:
	// worker 2
	// worker 3
	// worker 2
	// balancer: unknown policy "random"; want round-robin or least-loaded
}
