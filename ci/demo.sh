#!/usr/bin/env bash
# The demo: the incident reproduced on a 5-node lab of real nodes (Kubernetes' kubelet,
# containerd, runc, CNI, BIRD) and caught by postflight.
#   1. a healthy reboot of k8s-worker-03 passes every check;
#   2. the OS update replaces /etc/tmpfiles.d/calico.conf: `drift` finds it before any
#      reboot; the reboot breaks Calico on the node, and postflight fails it with the
#      evidence and the fix;
#   3. the fix is applied and the node verifies clean across another reboot.
# Run as root on a fresh Debian/Ubuntu machine; it installs what it needs first.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
bash ci/setup.sh
cargo build --workspace --bins --locked --quiet
# The lab's control plane and its nodes' kubelet: Kubernetes' own, built from Go modules,
# with a real node's containerd, runc shim, ctr and agnhost (minutes the first time on a
# machine, then cached; each build says how long it took).
bash ci/lab/k8s/build.sh >/dev/null
for tool in containerd containerd-shim-runc-v2 ctr agnhost; do
  bash ci/lab/k8s/build.sh "$tool" >/dev/null
done
lab=target/debug/postflight-lab
postflight=target/debug/postflight
name=demo
node=k8s-worker-03
reports=$PWD/target/postflight/demo
mkdir -p "$reports"
trap '"$lab" down --name "$name" >/dev/null 2>&1 || true' EXIT

banner() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# Runs postflight verify and checks its exit code is the one the story expects.
verify() {
  local expect=$1 junit=$2; shift 2
  local code=0
  "$postflight" --inventory "$inventory" verify --node "$node" --junit "$reports/$junit" "$@" || code=$?
  if [ "$code" -ne "$expect" ]; then
    echo "demo: postflight exited $code, expected $expect" >&2
    exit 1
  fi
}

banner "bring up a 5-node Calico lab"
"$lab" up --name "$name"
inventory=$("$lab" path --name "$name")/inventory.yaml
state=$("$lab" path --name "$name")
kubectl="$state/bin/kubectl --kubeconfig $state/kubeconfig"

banner "1. a healthy reboot of $node: every check passes (exit 0)"
verify 0 1-healthy-reboot.xml --reboot

banner "2. the incident: the OS update replaces /etc/tmpfiles.d/calico.conf, then the reboot"
"$lab" os-update --name "$name" --node "$node" --clobber-tmpfiles
banner "   postflight drift finds the time bomb before anything reboots (exit 1)"
code=0
"$postflight" --inventory "$inventory" drift --junit "$reports/2-drift.xml" || code=$?
[ "$code" -eq 1 ] || { echo "demo: drift exited $code, expected 1" >&2; exit 1; }
banner "   … and the reboot breaks calico-node on $node (exit 1)"
verify 1 2-incident.xml --reboot

banner "3. the fix from the diagnosis: restore the file, recreate the directory, restart calico-node"
"$lab" node-exec --name "$name" --node "$node" -- sh -c \
  "echo 'd /run/calico 0755 999 999 -' > /etc/tmpfiles.d/calico.conf && systemd-tmpfiles --create /etc/tmpfiles.d/calico.conf"
$kubectl -n kube-system delete pod -l k8s-app=calico-node --field-selector "spec.nodeName=$node"
verify 0 3-fixed.xml
banner "   … and the fix survives the next reboot"
verify 0 4-fixed-reboot.xml --reboot

banner "JUnit reports"
ls -1 "$reports"/*.xml
