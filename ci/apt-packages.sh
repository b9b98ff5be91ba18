# Sourced by the scripts that install what the lab and the tests use: installs those of
# the named Debian packages that are missing, with one `apt-get update` first, and says
# which. Usage: install_packages SCRIPT-NAME PACKAGE...
install_packages() {
  local name=$1 package
  shift
  local missing=()
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  [ "${#missing[@]}" -gt 0 ] || return 0
  echo "$name: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
