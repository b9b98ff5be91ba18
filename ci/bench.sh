#!/usr/bin/env bash
# The benchmark: postflight's scenarios on labs of the given sizes (default 5), one table
# per size. Release builds. Run as root on the machine the tests run on, e.g.
#   bash ci/bench.sh 5 20 50
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
bash ci/setup.sh
export POSTFLIGHT_LAB_K8S_BIN
POSTFLIGHT_LAB_K8S_BIN=$(bash ci/lab/k8s/build.sh)
cargo build --release --workspace --bins --locked
export POSTFLIGHT_LAB_BIN="$PWD/target/release/postflight-lab"
exec target/release/postflight-bench --postflight "$PWD/target/release/postflight" "$@"
