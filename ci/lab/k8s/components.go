package main

import (
	"context"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

func runAPIServer(_ []string) int {
	return cli.Run(apiserver.NewAPIServerCommand())
}

func runControllerManager(_ []string) int {
	return cli.Run(controllermanager.NewControllerManagerCommand())
}

func runScheduler(_ []string) int {
	return cli.Run(scheduler.NewSchedulerCommand())
}

func runKubectl(args []string) int {
	// As kubectl's own main does: set verbosity before the command is built, so that
	// building it (plugins, .kuberc) logs at the level asked for.
	logs.GlogSetter(cmd.GetLogVerbosity(append([]string{"kubectl"}, args...))) //nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
	}
	return 0
}

func runKubelet(_ []string) int {
	return cli.Run(kubeletapp.NewKubeletCommand(context.Background()))
}

func runKubeProxy(_ []string) int {
	return cli.Run(proxyapp.NewProxyCommand())
}
