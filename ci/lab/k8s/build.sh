#!/usr/bin/env bash
# Builds lab-k8s, the lab's real Kubernetes (kube-apiserver, etcd, kube-controller-manager,
# kube-scheduler, kubectl, the real kubelet and the simulated kubelets' streaming server in
# one binary), unless the binary is already up to date, and prints its path.
# `build.sh TOOL` builds one tool of the module's `tool` block instead, at the module's
# version of it like every other dependency: a real node's containerd,
# containerd-shim-runc-v2 and ctr, agnhost (postflight's probe image), helm and krew (the
# chart's and the krew manifest's tests).
#
# The first build on a machine compiles most of Kubernetes and takes minutes on two cores;
# Go keeps its module and build caches (GOMODCACHE, GOCACHE), so later builds only link.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out_dir=${POSTFLIGHT_LAB_K8S_DIR:-$(cd "$here/../../.." && pwd)/target/lab-k8s}
what=${1:-lab-k8s}
case "$what" in
  lab-k8s) package=. ;;
  helm) package=helm.sh/helm/v4/cmd/helm ;;
  kubectl-krew) package=sigs.k8s.io/krew/cmd/krew ;;
  validate-krew-manifest) package=sigs.k8s.io/krew/cmd/validate-krew-manifest ;;
  containerd|containerd-shim-runc-v2|ctr) package=github.com/containerd/containerd/v2/cmd/$what ;;
  agnhost) package=k8s.io/kubernetes/test/images/agnhost ;;
  e2e.test) package=./conformance ;;
  *) echo "build.sh: build lab-k8s (the default), containerd, containerd-shim-runc-v2, ctr, agnhost, e2e.test, helm, kubectl-krew or validate-krew-manifest, not $what" >&2; exit 2 ;;
esac
binary=$out_dir/$what

if ! command -v go >/dev/null 2>&1; then
  echo "lab-k8s: Go is not installed, and the lab's control plane is built from Go modules." >&2
  echo "lab-k8s: install Go >= 1.26 (Debian: a current golang from backports, or go.dev/dl), then run: bash ci/lab/k8s/build.sh" >&2
  exit 1
fi
version=$(tr -d '[:space:]' < "$here/VERSION")
mkdir -p "$out_dir"
# Labs started side by side (parallel tests) share one build.
exec 9>"$out_dir/.build.lock"
flock 9

stamp=$( (echo "$what"; cat "$here/VERSION" "$here/go.mod" "$here/go.sum" "$here"/*.go "$here"/conformance/*.go; go version) | sha256sum | cut -d' ' -f1)
if [ -x "$binary" ] && [ "$(cat "$binary.stamp" 2>/dev/null)" = "$stamp" ]; then
  echo "$binary"
  exit 0
fi

started=$(date +%s)
cd "$here"
minor=${version#v1.}; minor=${minor%%.*}
version_ldflags=""
for stamped in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  version_ldflags="$version_ldflags -X $stamped.gitVersion=$version -X $stamped.gitMajor=1 -X $stamped.gitMinor=$minor"
  version_ldflags="$version_ldflags -X $stamped.gitTreeState=clean -X $stamped.buildDate=1970-01-01T00:00:00Z"
done
if [ "$what" = e2e.test ]; then
  # Kubernetes' e2e framework with the suites of test/e2e/common, at the module's
  # Kubernetes version (it reports it, and compares it with the server's).
  echo "lab-k8s: building Kubernetes' e2e tests $version from Go modules (minutes the first time on 2 cores, seconds later)" >&2
  GOTOOLCHAIN=local GOFLAGS=-mod=readonly go test -c -ldflags "-s -w $version_ldflags" -o "$binary.partial" "$package"
  mv "$binary.partial" "$binary"
  echo "$stamp" > "$binary.stamp"
  echo "lab-k8s: built in $(( $(date +%s) - started )) s: $binary" >&2
  echo "$binary"
  exit 0
fi
if [ "$what" != lab-k8s ]; then
  # A tool of the module (go.mod's `tool` block), at the module's version of it.
  module=$(GOFLAGS=-mod=readonly go list -f '{{.Module.Path}}' "$package")
  tool_version=$(GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$module")
  ldflags="-s -w" tags=""
  case "$what" in
    # Static, as their images and a node's PATH need them: no libc to match. A lab node
    # has no btrfs, devmapper or zfs, so containerd is built without those snapshotters.
    containerd|containerd-shim-runc-v2|ctr)
      export CGO_ENABLED=0
      tags=no_btrfs,no_devmapper,no_zfs
      ldflags="$ldflags -X github.com/containerd/containerd/v2/version.Version=$tool_version" ;;
    agnhost) export CGO_ENABLED=0 ;;
    helm) ldflags="$ldflags -X helm.sh/helm/v4/internal/version.version=$tool_version" ;;
    kubectl-krew) ldflags="$ldflags -X sigs.k8s.io/krew/internal/version.gitTag=$tool_version" ;;
  esac
  echo "lab-k8s: building $what $tool_version from Go modules (minutes the first time on 2 cores, seconds later)" >&2
  GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -tags "$tags" -ldflags "$ldflags" -o "$binary.partial" "$package"
  mv "$binary.partial" "$binary"
  echo "$stamp" > "$binary.stamp"
  echo "lab-k8s: built in $(( $(date +%s) - started )) s: $binary" >&2
  echo "$binary"
  exit 0
fi
echo "lab-k8s: building Kubernetes $version (kube-apiserver, etcd, kube-controller-manager, kube-scheduler, kubectl, kubelet) from Go modules; the first build on a machine takes about 7 minutes on 2 cores, later ones seconds" >&2
# The version the components report (`kubectl version`, /version) is stamped at link time,
# as Kubernetes' own release build does.
ldflags="-s -w $version_ldflags"
GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -ldflags "$ldflags" -o "$binary.partial" "$package"
mv "$binary.partial" "$binary"
echo "$stamp" > "$binary.stamp"
echo "lab-k8s: built in $(( $(date +%s) - started )) s: $binary" >&2
echo "$binary"
