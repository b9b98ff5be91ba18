#!/usr/bin/env bash
# postflight's OCI image, built with no daemon and no registry (umoci): the static binary
# at /usr/local/bin/postflight, the CA certificates, and a non-root user (65532) it runs
# as. Written as an OCI archive, tagged VERSION, that `skopeo copy` pushes anywhere.
# Usage: bash ci/image.sh BINARY VERSION OUT.oci.tar
set -euo pipefail
binary=${1:?usage: bash ci/image.sh BINARY VERSION OUT.oci.tar}
version=${2:?usage: bash ci/image.sh BINARY VERSION OUT.oci.tar}
out=${3:?usage: bash ci/image.sh BINARY VERSION OUT.oci.tar}
command -v umoci >/dev/null 2>&1 || { echo "ci/image.sh: umoci is missing (apt-get install umoci)" >&2; exit 2; }
# A dynamic binary names the libraries it needs (NEEDED); the image has none to give it.
if [ ! -x "$binary" ] || readelf -d "$binary" 2>/dev/null | grep -q '(NEEDED)'; then
  echo "ci/image.sh: $binary is not a static executable: the image has no libc or libssl to offer it" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
# As root the files keep their owners; otherwise umoci maps this user to root in them.
rootless=()
[ "$(id -u)" = 0 ] || rootless=(--rootless)
umoci init --layout "$layout"
umoci new --image "$layout:$version"
umoci unpack "${rootless[@]}" --image "$layout:$version" "$work/bundle"
rootfs=$work/bundle/rootfs
install -D -m 0755 "$binary" "$rootfs/usr/local/bin/postflight"
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
  > "$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$rootfs/etc/group"
install -d -m 0755 "$rootfs/home/nonroot"
install -d -m 1777 "$rootfs/tmp"
[ "$(id -u)" = 0 ] && chown 65532:65532 "$rootfs/home/nonroot"
created=$(date -u -d "@${SOURCE_DATE_EPOCH:-$(date +%s)}" +%Y-%m-%dT%H:%M:%SZ)
umoci repack --image "$layout:$version" "$work/bundle"
umoci config --image "$layout:$version" \
  --os linux --architecture amd64 --created "$created" --author postflight \
  --config.user 65532:65532 --config.workingdir /home/nonroot \
  --config.entrypoint /usr/local/bin/postflight \
  --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label org.opencontainers.image.title=postflight \
  --config.label "org.opencontainers.image.version=$version" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --history.created "$created" --history.created_by "ci/image.sh"
umoci gc --layout "$layout"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" \
  -C "$layout" -cf "$out" .
echo "ci/image.sh: $out ($(stat -c %s "$out") bytes), tag $version" >&2
