#!/usr/bin/env bash
# Proves the cluster suite (tests/post_update.rs) the way a user runs it: pointed at a
# cluster, here a fresh 5-node lab, rebooting k8s-worker-03 first. The lab is taken
# down when this script ends, also when the suite fails.
set -euo pipefail
cd "$(dirname "$0")/.."
lab_bin=${POSTFLIGHT_LAB_BIN:-target/debug/postflight-lab}
name=pf-suite
trap '"$lab_bin" down --name "$name" >/dev/null 2>&1 || true' EXIT
"$lab_bin" up --name "$name" >/dev/null
state=$("$lab_bin" path --name "$name")
junit=target/postflight/cluster-suite-junit.xml
rm -f "$junit"
POSTFLIGHT_INVENTORY="$state/inventory.yaml" POSTFLIGHT_NODE=k8s-worker-03 POSTFLIGHT_REBOOT=1 \
  POSTFLIGHT_JUNIT="$PWD/$junit" cargo test --locked --test post_update
# The suite must have reported every check, each passed, in its JUnit.
cases=$(grep -o '<testcase ' "$junit" | wc -l)
bad=$(grep -Eo '<(failure|error|skipped)' "$junit" | wc -l || true)
if [ "$cases" -ne 8 ] || [ "$bad" -ne 0 ]; then
  echo "cluster suite JUnit: $cases testcases, $bad not passed (want 8 and 0): $junit" >&2
  exit 1
fi
echo "cluster suite: 8 checks passed against lab $name; JUnit: $junit"
