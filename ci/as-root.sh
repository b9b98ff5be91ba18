# Sourced first by every script a person runs (demo, tests, setup, bench): the lab makes
# network namespaces, mounts and cgroups, so they run as root. As root they go on at
# once, with or without sudo installed; as anyone else they run again through sudo,
# keeping PATH and the Rust toolchain's homes so that cargo, rustup and go are still found.
if [ "$(id -u)" != 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$(basename "$0"): run as root (the lab creates network namespaces, mounts and cgroups); sudo is not installed" >&2
    exit 2
  fi
  exec sudo env "PATH=$PATH" "RUSTUP_HOME=${RUSTUP_HOME:-$HOME/.rustup}" \
    "CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}" bash "$0" "$@"
fi
