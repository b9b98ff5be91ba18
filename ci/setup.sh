#!/usr/bin/env bash
# Installs what postflight and its lab need on a fresh Debian/Ubuntu machine, as root.
# Idempotent: a machine that has everything already is left as it is.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."

# The real parts the lab is built from (nftables for its firewall knob), and what ssh2's
# libssh2/OpenSSL build needs.
packages=(openssh-server openssh-client bird2 iproute2 nftables curl util-linux procps systemd
          libssl-dev pkg-config ca-certificates
          runc busybox-static containernetworking-plugins iptables gcc libc6-dev python3)
# (util-linux brings setpriv: lab containers run as their securityContext's user.)
source ci/apt-packages.sh
install_packages ci/setup.sh "${packages[@]}"

# The lab's control plane is Kubernetes' own, built from Go modules (ci/lab/k8s): Go must
# be new enough for the pinned Kubernetes version's go.mod. kubectl comes with it, at the
# server's version.
if ! command -v go >/dev/null; then
  echo "ci/setup.sh: Go >= 1.26 is required to build the lab's control plane (https://go.dev/dl)" >&2
  exit 1
fi
required_go=$(sed -n 's/^go \([0-9.]*\)$/\1/p' ci/lab/k8s/go.mod)
have_go=$(go env GOVERSION | sed 's/^go//')
if [ "$(printf '%s\n%s\n' "$required_go" "$have_go" | sort -V | head -n1)" != "$required_go" ]; then
  echo "ci/setup.sh: Go $have_go is older than the $required_go the lab's Kubernetes needs" >&2
  exit 1
fi

if ! command -v cargo >/dev/null; then
  echo "ci/setup.sh: cargo is required (https://rustup.rs)" >&2
  exit 1
fi
