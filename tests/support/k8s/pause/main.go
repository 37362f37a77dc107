// Command pause is the test cluster's sandbox ("pause") image's only program.
//
// Every pod's sandbox container runs it to hold the pod's namespaces: it does
// nothing until SIGINT or SIGTERM, and reaps children it inherits, as the
// upstream pause does (build/pause/linux/pause.c in k8s.io/kubernetes). No
// registry is reachable here, so scripts/k8s-toolchain.sh builds it and the
// test support makes the image from it.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
