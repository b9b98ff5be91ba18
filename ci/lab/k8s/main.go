// Command lab-k8s is the lab's real Kubernetes control plane: one binary that runs
// kube-apiserver, kube-controller-manager, kube-scheduler, etcd, kubectl, or the lab
// kubelets' streaming server, chosen by its first argument. All are built from one pinned
// Kubernetes version (see VERSION), so the lab's client always matches its server.
package main

import (
	"fmt"
	"os"
	"path/filepath"
)

type subcommand struct {
	run     func(args []string) int
	summary string
}

var subcommands = map[string]subcommand{
	"kube-apiserver":          {runAPIServer, "the Kubernetes API server"},
	"kube-controller-manager": {runControllerManager, "the Kubernetes controller manager"},
	"kube-scheduler":          {runScheduler, "the Kubernetes scheduler"},
	"etcd":                    {runEtcd, "an embedded etcd member"},
	"etcd-compact":            {runEtcdCompact, "compacts etcd at its current revision"},
	"kubelet":                 {runKubelet, "the real kubelet of a lab node"},
	"kube-proxy":              {runKubeProxy, "a lab node's Service proxy (nftables)"},
	"kubectl":                 {runKubectl, "kubectl, at the server's version"},
	"kubelet-server":          {runKubeletServer, "a lab node's kubelet API: exec and logs"},
}

func main() {
	// Called through a link named after a subcommand (…/kubectl), behave as that command.
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, found := subcommands[name]; !found {
		if len(args) == 0 {
			usage()
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	command, found := subcommands[name]
	if !found {
		fmt.Fprintf(os.Stderr, "lab-k8s: unknown subcommand %q\n", name)
		usage()
		os.Exit(2)
	}
	os.Args = append([]string{name}, args...)
	os.Exit(command.run(args))
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lab-k8s SUBCOMMAND [FLAGS]")
	for name, command := range subcommands {
		fmt.Fprintf(os.Stderr, "  %-24s %s\n", name, command.summary)
	}
}
