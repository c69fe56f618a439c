#!/usr/bin/env bash
# Installs what carpool needs to build and test, on Debian 12 or Ubuntu; skips what is present.
set -euo pipefail
pkgs=(build-essential pkg-config libevent-dev libcjson-dev libyaml-dev libssl-dev libcmocka-dev curl openssl ca-certificates)
need=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
