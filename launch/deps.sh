#!/usr/bin/env bash
# deps.sh — make sure the Debian packages ddp-cnn needs are installed. Sourced by run.sh and test.sh.
# As root: installs what is missing (apt-get update first). Otherwise: prints the one command and exits 2.
set -euo pipefail

DDP_PACKAGES=(build-essential cmake pkg-config openmpi-bin libopenmpi-dev libcmocka-dev zlib1g-dev
  libopenblas-dev libdnnl-dev libinih-dev libcjson-dev libturbojpeg0-dev libspng-dev libjpeg-turbo-progs python3-pil gnuplot-nox
  dataset-fashion-mnist)

ddp_missing_packages() {
  local p missing=()
  for p in "${DDP_PACKAGES[@]}" "$@"; do
    grep -q "install ok installed" <<<"$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

ddp_install_deps() {
  local missing
  missing=$(ddp_missing_packages "$@")
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: $missing" >&2
    echo "install them with:  sudo apt-get update && sudo apt-get install -y $missing" >&2
    exit 2
  fi
  echo "installing: $missing"
  apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  case "${1:-}" in -h|--help) sed -n '2,3p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
  ddp_install_deps "$@"
fi
