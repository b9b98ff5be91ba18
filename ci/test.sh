#!/usr/bin/env bash
# All tests: formatting, lints, unit tests, the end-to-end tests against real labs, and
# the cluster suite pointed at a lab the way a user points it at a cluster.
# Run as root on a fresh Debian/Ubuntu machine: it installs what it needs first.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
bash ci/setup.sh
# What the report tests check JUnit, HTML and metrics with (xmllint, Chromium, promtool).
bash ci/report-tools.sh
# The real linters the pipeline templates are held to (actionlint, zizmor, ansible-lint,
# GitLab's schema).
bash ci/linters.sh

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# What a release is built with (musl, umoci, skopeo, cargo-cyclonedx), for the release
# tests.
bash ci/release-tools.sh
# The lab's Go part: formatted, vetted, and built once (the first build on a machine
# compiles Kubernetes and takes minutes; later ones reuse Go's caches).
unformatted=$(gofmt -l ci/lab/k8s)
[ -z "$unformatted" ] || { echo "gofmt: $unformatted" >&2; exit 1; }
(cd ci/lab/k8s && GOFLAGS=-mod=readonly go vet ./...)
export POSTFLIGHT_LAB_K8S_BIN
POSTFLIGHT_LAB_K8S_BIN=$(bash ci/lab/k8s/build.sh)
# A real node's parts from the same module (containerd, its runc shim, ctr, agnhost), and
# Kubernetes' e2e tests for the conformance test: built once here, before the tests start
# labs side by side.
for tool in containerd containerd-shim-runc-v2 ctr agnhost; do
  bash ci/lab/k8s/build.sh "$tool" >/dev/null
done
export POSTFLIGHT_E2E_TEST
POSTFLIGHT_E2E_TEST=$(bash ci/lab/k8s/build.sh e2e.test)
# Helm and krew, tools of the same module, for the chart's and the krew manifest's tests.
export POSTFLIGHT_HELM POSTFLIGHT_KREW POSTFLIGHT_KREW_VALIDATE
POSTFLIGHT_HELM=$(bash ci/lab/k8s/build.sh helm)
POSTFLIGHT_KREW=$(bash ci/lab/k8s/build.sh kubectl-krew)
POSTFLIGHT_KREW_VALIDATE=$(bash ci/lab/k8s/build.sh validate-krew-manifest)
# The release exactly as ci/release.sh makes it: tests/release.rs checks what it wrote.
export POSTFLIGHT_DIST="$PWD/target/dist"
bash ci/release.sh "$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
# The end-to-end tests start `postflight-lab` and `postflight` as processes.
cargo build --workspace --bins --locked
# The crate packages and builds as crates.io would take it.
cargo publish --dry-run --locked --quiet
export POSTFLIGHT_LAB_BIN="$PWD/target/debug/postflight-lab"
export POSTFLIGHT_BIN="$PWD/target/debug/postflight"
# Each end-to-end test runs its own lab; two at a time fit the 2-core build machines.
cargo test --workspace --locked -- --test-threads 2
bash ci/cluster-suite.sh
