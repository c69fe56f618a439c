#!/usr/bin/env bash
# End-to-end tests: the real carpool binary and the simulator on loopback, real clients.
# With arguments, only those test files (relative to tests/e2e).
# Every test has a timeout (lib.js's test(), 60 s by default). Where this node has them (20.14 and
# later), --test-timeout backs it up for a test that bypasses it and --test-force-exit ends a file
# whose timed-out test left handles open; Node 18 has neither, and lib.js's timeout alone applies.
set -euo pipefail
cd "$(dirname "$0")"
[ $# -gt 0 ] || set -- ./*.test.js
opts=()
for o in --test-timeout=300000 --test-force-exit; do
  if node "$o" -e 0 2>/dev/null; then opts+=("$o"); fi
done
exec node --test --test-concurrency=1 "${opts[@]}" --test-reporter=spec "$@"
