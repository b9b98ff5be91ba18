// Package conformance is Kubernetes' own e2e test binary for the lab, built from the
// lab's one module at the pinned version: the framework and the suites of
// test/e2e/common (pods, probes, init containers, exec and logs, volumes, environment,
// pod networking), as Kubernetes' framework lets a consumer pick the suites it links.
// Built with `go test -c`; the lab crate's conformance test runs the binary against a
// lab of real nodes with a --ginkgo.focus of the tests it names.
package conformance

import (
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"

	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"

	// The suites: everything in them registers with Ginkgo at init.
	_ "k8s.io/kubernetes/test/e2e/common/network"
	_ "k8s.io/kubernetes/test/e2e/common/node"
	_ "k8s.io/kubernetes/test/e2e/common/storage"

	// What Kubernetes' own e2e binary links to reconfigure the framework: dumps on
	// failure and the node helpers.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
)

func TestMain(m *testing.M) {
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	framework.AfterReadingAllFlags(&framework.TestContext)
	os.Exit(m.Run())
}

func TestConformance(t *testing.T) {
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "postflight lab conformance", suiteConfig, reporterConfig)
}
