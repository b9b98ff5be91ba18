#!/usr/bin/env bash
# Installs what postflight and its lab need on a fresh Debian/Ubuntu machine, as root.
# Idempotent: a machine that has everything already is left as it is.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
  echo "ci/setup.sh: run as root (the lab creates network namespaces and mounts)" >&2
  exit 2
fi

# The real parts the lab is built from (nftables for its firewall knob), and what ssh2's
# libssh2/OpenSSL build needs.
packages=(openssh-server openssh-client bird2 iproute2 nftables curl util-linux procps systemd
          libssl-dev pkg-config ca-certificates)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci/setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl is the independent client that proves the lab speaks Kubernetes; it comes with
# the build image, and from the Kubernetes apt repository elsewhere.
if ! command -v kubectl >/dev/null; then
  apt-get install -y -qq kubectl >/dev/null 2>&1 || {
    echo "ci/setup.sh: kubectl is required and could not be installed" >&2
    exit 1
  }
fi

if ! command -v cargo >/dev/null; then
  echo "ci/setup.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
