#!/usr/bin/env bash
# All tests: formatting, lints, unit tests, the end-to-end tests against real labs, and
# the cluster suite pointed at a lab the way a user points it at a cluster.
# Run as root on a fresh Debian/Ubuntu machine: it installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The end-to-end tests start `postflight-lab` and `postflight` as processes.
cargo build --workspace --bins --locked
export POSTFLIGHT_LAB_BIN="$PWD/target/debug/postflight-lab"
export POSTFLIGHT_BIN="$PWD/target/debug/postflight"
# Each end-to-end test runs its own lab; two at a time fit the 2-core build machines.
cargo test --workspace --locked -- --test-threads 2
bash ci/cluster-suite.sh
