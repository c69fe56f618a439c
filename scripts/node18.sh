#!/usr/bin/env bash
# Runs the e2e suite (or the test files given, relative to tests/e2e) with Debian 12's own Node 18,
# the node a fresh Debian 12 has, without touching the system's node.
#
# When the default `node` is 18 already, it is used as is. Otherwise Debian's packages (nodejs,
# libnode108, the JS files libnode108 loads from /usr/share/nodejs, and any library of libnode108's
# that is not installed) are fetched with `apt-get download` into .cache/node18 and unpacked there with
# `dpkg-deb -x`; nothing is installed. Debian builds node to load undici (fetch), acorn and
# cjs-module-lexer from fixed paths under /usr/share/nodejs/, so the private copy of libnode.so.108 has
# that prefix rewritten to /proc/self/fd/999/ (same length), and the wrapper .cache/node18/bin/node
# opens fd 999 on the unpacked /usr/share/nodejs. Child processes inherit the fd and LD_LIBRARY_PATH.
#
#   scripts/node18.sh                    the whole e2e suite
#   scripts/node18.sh sdk.test.js        some files
#   NODE18_SETUP_ONLY=1 scripts/node18.sh   only prepare .cache/node18/bin/node and print its path
set -euo pipefail
cd "$(dirname "$0")/.."
root_dir=$PWD
cache=$root_dir/.cache/node18
wrapper=$cache/bin/node

major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo none; }

# The newest Debian nodejs 18.x apt knows of (the nodesource package may be the candidate).
debian_version() {
  apt-cache madison nodejs 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2) } $2 ~ /^18\./ { print $2; exit }'
}

setup() {
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null ||
    { echo "node18.sh: needs apt-get and dpkg-deb (Debian or Ubuntu)" >&2; exit 1; }
  local ver
  ver=$(debian_version)
  if [ -z "$ver" ]; then
    echo "node18.sh: apt knows no nodejs 18.x; running apt-get update"
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    ver=$(debian_version)
  fi
  [ -n "$ver" ] || { echo "node18.sh: no Debian nodejs 18.x in the apt sources (Debian 12 bookworm has it)" >&2; exit 1; }

  # libnode108's dependencies: the node-* packages are JS files it loads at run time; libraries
  # are fetched only when missing here.
  local pkgs=("nodejs=$ver" "libnode108=$ver") dep
  for dep in $(apt-cache depends "libnode108=$ver" | awk '$1 == "Depends:" && $2 !~ /^</ { print $2 }' | sort -u); do
    case $dep in
      node-*) pkgs+=("$dep") ;;
      *) dpkg -s "$dep" >/dev/null 2>&1 || pkgs+=("$dep") ;;
    esac
  done
  echo "node18.sh: downloading Debian's nodejs $ver into .cache/node18 (not installed): ${pkgs[*]%%=*}"
  rm -rf "$cache"
  mkdir -p "$cache/debs" "$cache/bin" "$cache/lib"
  # as root, apt would download as _apt, who cannot write to the clone
  local sandbox=()
  [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$cache/debs" && apt-get download -q "${sandbox[@]}" "${pkgs[@]}")
  local deb
  for deb in "$cache"/debs/*.deb; do dpkg-deb -x "$deb" "$cache/root"; done

  local multi
  multi=$(basename "$(dirname "$(find "$cache/root" -name libnode.so.108 | head -n1)")")
  local libdir=$cache/root/usr/lib/$multi
  # The patched copy goes alone into lib/ (first on LD_LIBRARY_PATH), the unpacked libraries after it.
  perl -pe 's{/usr/share/nodejs/}{/proc/self/fd/999/}g' "$libdir/libnode.so.108" > "$cache/lib/libnode.so.108"
  cat > "$wrapper" <<EOF
#!/usr/bin/env bash
# Debian's node $ver from .cache/node18 (made by scripts/node18.sh)
[ "\$(ulimit -S -n)" = unlimited ] || [ "\$(ulimit -S -n)" -gt 999 ] || ulimit -S -n 1024
exec 999<"$cache/root/usr/share/nodejs"
LD_LIBRARY_PATH="$cache/lib:$libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "$cache/root/usr/bin/node" "\$@"
EOF
  chmod +x "$wrapper"
  if LD_LIBRARY_PATH="$cache/lib:$libdir" ldd "$cache/root/usr/bin/node" | grep 'not found'; then
    echo "node18.sh: libraries missing (above)" >&2
    exit 1
  fi
  # fetch loads the externalized undici: a data: URL needs no network
  [ "$("$wrapper" -e "fetch('data:,ok').then((r) => r.text()).then(console.log)")" = ok ] ||
    { echo "node18.sh: $wrapper does not run" >&2; exit 1; }
}

if [ "$(major node)" = 18 ]; then
  node=$(command -v node)
else
  [ "$(major "$wrapper")" = 18 ] || setup
  node=$wrapper
fi
if [ -n "${NODE18_SETUP_ONLY:-}" ]; then
  echo "$node"
  exit 0
fi
echo "node18.sh: e2e suite with node $("$node" --version) ($node)"
make -s all tests/e2e/node_modules # the binaries and the SDK the package files name
PATH="$(dirname "$node"):$PATH" exec bash tests/e2e/run.sh "$@"
