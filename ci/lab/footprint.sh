#!/usr/bin/env bash
# Brings up a lab of N nodes, lets it settle, and prints how long `up` took and the
# memory (PSS, which splits shared pages fairly between processes) of each part: every
# control-plane component, the lab daemon (kubelets), and the node processes (sshd, BIRD,
# containers). Takes the lab down at the end.   usage: ci/lab/footprint.sh NODES [SETTLE_S]
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=${1:?usage: footprint.sh NODES [SETTLE_SECONDS]}
settle=${2:-20}
lab_bin=${POSTFLIGHT_LAB_BIN:-target/debug/postflight-lab}
name=footprint-$nodes
trap '"$lab_bin" down --name "$name" >/dev/null 2>&1 || true' EXIT
started=$(date +%s.%N)
"$lab_bin" up --name "$name" --nodes "$nodes" >/dev/null
up=$(python3 -c "import sys; print(float(sys.argv[1]) - float(sys.argv[2]))" "$(date +%s.%N)" "$started")
sleep "$settle"
state=$("$lab_bin" path --name "$name")
daemon=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$state/ready.json")
pss() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
declare -A parts
for pid in $(pgrep -g "$daemon"); do
  args=$( (tr '\0' ' ' < "/proc/$pid/cmdline") 2>/dev/null || true)
  case "$args" in
    *lab-k8s\ etcd\ *) part=etcd ;;
    *lab-k8s\ kube-apiserver*) part=kube-apiserver ;;
    *lab-k8s\ kube-controller-manager*) part=kube-controller-manager ;;
    *lab-k8s\ kube-scheduler*) part=kube-scheduler ;;
    *lab-k8s\ kubelet-server*) part=kubelet-server ;;
    *postflight-lab\ daemon*) part="lab daemon (kubelets)" ;;
    *) part="node processes" ;;
  esac
  parts[$part]=$(( ${parts[$part]:-0} + $(pss "$pid") ))
done
printf 'lab of %d nodes: up in %.1f s; PSS after %d s:\n' "$nodes" "$up" "$settle"
plane=0
for part in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet-server; do
  printf '  %-26s %6d MiB\n' "$part" $(( ${parts[$part]:-0} / 1024 ))
  plane=$(( plane + ${parts[$part]:-0} ))
done
printf '  %-26s %6d MiB\n' "control plane in all" $(( plane / 1024 ))
for part in "lab daemon (kubelets)" "node processes"; do
  printf '  %-26s %6d MiB\n' "$part" $(( ${parts[$part]:-0} / 1024 ))
done
printf '  load average: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
