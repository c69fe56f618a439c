#!/usr/bin/env bash
# End-to-end tests: the real carpool binary and the simulator on loopback, real clients.
set -euo pipefail
cd "$(dirname "$0")"
exec node --test --test-concurrency=1 --test-reporter=spec ./*.test.js
