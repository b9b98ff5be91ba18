#!/usr/bin/env bash
# What the tests of postflight's reports check them with, on a fresh Debian machine, as
# root: xmllint (JUnit against its schemas), Chromium (the HTML report in a real browser),
# promtool (the metrics file), and the Jenkins xunit plugin's JUnit schema. Idempotent.
set -euo pipefail
source "$(dirname "$0")/as-root.sh"

source "$(dirname "$0")/apt-packages.sh"
# The prometheus package would start a server; only its promtool is wanted, so no
# package may start a service while these install.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
install_packages ci/report-tools.sh libxml2-utils chromium prometheus curl python3 man-db
rm -f /usr/sbin/policy-rc.d
trap - EXIT

# The Jenkins xunit plugin's junit-10.xsd is published in no package of its own; pytest
# ships it (for the same purpose) in its source distribution on PyPI. Pinned by hash.
schemas=/opt/postflight-ci/schemas
if ! echo "a1a816f58d1bf95ebabf371994df0b9246dee66ea9572fbec4f9296f1b2c0ff6  $schemas/junit-10.xsd" | sha256sum -c --status 2>/dev/null; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # (pip reads the sdist's metadata by building it: a few seconds, once.)
  python3 -m pip download --quiet --no-binary :all: --no-deps pytest==9.2.0 -d "$work"
  echo "97c4f3b1f3c7414aa36465e09b8220f1d03627993bd51b1282e193753c80557b  $work/pytest-9.2.0.tar.gz" | sha256sum -c --quiet
  tar -xzf "$work/pytest-9.2.0.tar.gz" -C "$work" pytest-9.2.0/testing/example_scripts/junit-10.xsd
  mkdir -p "$schemas"
  install -m 0644 "$work/pytest-9.2.0/testing/example_scripts/junit-10.xsd" "$schemas/junit-10.xsd"
fi
