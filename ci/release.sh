#!/usr/bin/env bash
# Builds a release of postflight into dist/ (or $POSTFLIGHT_DIST):
#   postflight-VERSION-x86_64-linux.tar.gz  the static binary, README, LICENSE, CHANGELOG,
#                                           completions (bash, zsh, fish) and man pages
#   postflight-VERSION.oci.tar              an OCI image: the binary, CA certificates and a
#                                           non-root user (65532), built without a daemon
#   postflight-VERSION.cdx.json             the SBOM: every crate inside (CycloneDX)
#   SHA256SUMS                              of all three
#   postflight.krew.yaml                    the krew plugin manifest for the tarball
# Usage: bash ci/release.sh VERSION   (VERSION is Cargo.toml's, e.g. 0.2.0)
# Needs no root and installs nothing: a missing tool is named with how to install it
# (bash ci/release-tools.sh installs them all, as root).
set -euo pipefail
cd "$(dirname "$0")/.."

version=${1:-}
if [ -z "$version" ]; then
  echo "usage: bash ci/release.sh VERSION" >&2
  exit 2
fi
crate_version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)
if [ "$version" != "$crate_version" ]; then
  echo "ci/release.sh: VERSION $version is not Cargo.toml's $crate_version: bump it there first" >&2
  exit 2
fi

target=x86_64-unknown-linux-musl
missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 ($2)"); }
need cargo "https://rustup.rs"
need musl-gcc "apt-get install musl-tools"
need umoci "apt-get install umoci"
need sha256sum "apt-get install coreutils"
need cargo-cyclonedx "cargo install --locked cargo-cyclonedx@0.5.9"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$target"; then
  missing+=("the $target standard library (rustup target add $target)")
fi
if [ ! -r /etc/ssl/certs/ca-certificates.crt ]; then
  missing+=("/etc/ssl/certs/ca-certificates.crt (apt-get install ca-certificates)")
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ci/release.sh: missing, install first (or run bash ci/release-tools.sh as root):" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

dist=${POSTFLIGHT_DIST:-dist}
mkdir -p "$dist"
dist=$(cd "$dist" && pwd)
started=$(date +%s)
echo "ci/release.sh: building postflight $version for $target (OpenSSL from source, thin LTO: minutes on 2 cores the first time)" >&2
# SOURCE_DATE_EPOCH: the build date the binary reports is the commit's, so a rebuild of
# the same commit says the same.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --profile dist \
  --target "$target" --features vendored-openssl --bin postflight
binary=target/$target/dist/postflight

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
name=postflight-$version-x86_64-linux
mkdir -p "$stage/$name/completions" "$stage/$name/man"
cp "$binary" "$stage/$name/postflight"
cp README.md LICENSE CHANGELOG.md "$stage/$name/"
"$binary" completions bash > "$stage/$name/completions/postflight.bash"
"$binary" completions zsh > "$stage/$name/completions/_postflight"
"$binary" completions fish > "$stage/$name/completions/postflight.fish"
"$binary" man --out-dir "$stage/$name/man"
# Owner, order and times fixed, so the tarball is the same for the same build.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" \
  -C "$stage" -czf "$dist/$name.tar.gz" "$name"

# The SBOM of what is inside the binary: the crates of its build for its target, with
# the release's features, build dependencies included (OpenSSL's sources come in as one);
# no dev-dependency. cargo-cyclonedx writes one per workspace member: the lab's is not
# part of the release.
cargo cyclonedx --quiet --format json --spec-version 1.5 --target "$target" \
  --features vendored-openssl --override-filename "postflight-$version.cdx"
mv "postflight-$version.cdx.json" "$dist/postflight-$version.cdx.json"
rm -f "ci/lab/postflight-$version.cdx.json"

bash ci/image.sh "$binary" "$version" "$dist/postflight-$version.oci.tar"

(cd "$dist" && sha256sum "$name.tar.gz" "postflight-$version.oci.tar" "postflight-$version.cdx.json" > SHA256SUMS)
# The krew manifest for this tarball: its version and checksum filled in.
tarball_sum=$(sha256sum "$dist/$name.tar.gz" | cut -d' ' -f1)
sed -e "s/VERSION/$version/g" -e "s/SHA256/$tarball_sum/" deploy/krew/postflight.yaml \
  > "$dist/postflight.krew.yaml"
echo "ci/release.sh: postflight $version in $dist ($(( $(date +%s) - started )) s); binary $(stat -c %s "$binary") bytes" >&2
ls -l "$dist" >&2
