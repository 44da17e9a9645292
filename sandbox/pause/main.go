// Command pause is the sandbox's pod infrastructure container: it holds the pod's
// namespaces, reaps orphaned children (it is PID 1 of the pod) and exits on SIGTERM or
// SIGINT. No public pause image can be pulled on the sandbox machines, so the sandbox
// builds this one and pushes it to its own registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 16)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-children:
			for {
				var ws syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
