#!/usr/bin/env bash
# What ci/release.sh builds a release with, on a Debian machine, as root: musl-gcc (the
# static binary's C parts: OpenSSL, libssh2, ring), umoci (the OCI image, no daemon),
# skopeo (reads the image back in the tests; pushes it to a registry), Rust's musl
# standard library, and cargo-cyclonedx (the SBOM), pinned. Idempotent.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
source "$(dirname "$0")/apt-packages.sh"
install_packages ci/release-tools.sh musl-tools umoci skopeo binutils ca-certificates
target=x86_64-unknown-linux-musl
if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target"
fi
cyclonedx=0.5.9
if [ "$(cargo cyclonedx --version 2>/dev/null | awk '{print $2}')" != "$cyclonedx" ]; then
  echo "ci/release-tools.sh: installing cargo-cyclonedx $cyclonedx (a minute or two the first time)"
  cargo install --locked --quiet "cargo-cyclonedx@$cyclonedx"
fi
