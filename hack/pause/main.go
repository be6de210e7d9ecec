// Command pause is the process of every pod sandbox on the local cluster's real nodes: it
// holds the pod's namespaces, reaps orphans (when the pod shares its PID namespace) and exits
// on SIGTERM or SIGINT. The images cannot be pulled here, so hack/images.sh builds this one
// into a scratch image instead of registry.k8s.io/pause.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	children := make(chan os.Signal, 8)
	signal.Notify(children, syscall.SIGCHLD)
	for {
		select {
		case <-stop:
			return
		case <-children:
			for {
				var status syscall.WaitStatus
				pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
		}
	}
}
