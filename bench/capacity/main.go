// Command capacity is the compiled side of bench/capacity.py: a streaming
// stand-in replica and the clients that load the balancer, on loopback.
//
//	capacity stub  -listen 127.0.0.1:9000 -ttft 50ms -tokens 40 -interval 250ms
//	capacity load  -url http://127.0.0.1:8080 -streams 10000 -ramp 5s
//	capacity stall -addr 127.0.0.1:8080 -count 1000 -send 2097152 -length 104857600 -hold 15s
//
// Python stand-ins top out near 1,000 concurrent streams on this machine;
// Go's net/http holds 10,000 in one process, so the balancer is what is
// measured. Standard library only.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: capacity stub|load|stall [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "stub":
		err = runStub(os.Args[2:])
	case "load":
		err = runLoad(os.Args[2:])
	case "stall":
		err = runStall(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q: use stub, load or stall", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "capacity:", err)
		os.Exit(1)
	}
}
