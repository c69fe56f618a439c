#!/usr/bin/env bash
# Installs what carpool needs to build and test, on Debian 12 or Ubuntu; skips what is present.
set -euo pipefail
pkgs=(build-essential pkg-config libevent-dev libcjson-dev libyaml-dev libssl-dev libcmocka-dev liburing-dev curl openssl ca-certificates)
need=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing with apt-get: ${need[*]}"
  echo "install-deps: (compiler, libevent/cJSON/libyaml/OpenSSL/liburing headers, cmocka, curl, Node.js and npm for the"
  echo "install-deps:  end-to-end tests); on a fresh machine this may take a few minutes"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  echo "install-deps: done"
else
  echo "install-deps: every package needed is installed"
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 18 ]; then
  echo "install-deps: warning: node $(node --version) is too old for the end-to-end tests (18 or later)" >&2
fi
