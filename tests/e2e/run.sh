#!/usr/bin/env bash
# End-to-end tests: the real carpool binary and the simulator on loopback, real clients.
# With arguments, only those test files (relative to tests/e2e).
set -euo pipefail
cd "$(dirname "$0")"
[ $# -gt 0 ] || set -- ./*.test.js
exec node --test --test-concurrency=1 --test-reporter=spec "$@"
