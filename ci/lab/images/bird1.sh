#!/usr/bin/env bash
# Unpacks Debian's BIRD 1.6 (the line Calico's own BIRD is forked from) for the
# calico-node stand-in's image, and prints where. Unpacked, not installed: the package
# conflicts with bird2, which the simulated nodes run.
set -euo pipefail
out=${1:?usage: bird1.sh OUT-DIR}
if [ -x "$out/root/usr/sbin/bird" ]; then echo "$out/root"; exit 0; fi
mkdir -p "$out"
cd "$out"
rm -f bird_*.deb
apt-get download bird >/dev/null 2>&1 || { apt-get update -qq && apt-get download bird >/dev/null; }
dpkg -x bird_*.deb root
echo "$out/root"
