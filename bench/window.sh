#!/usr/bin/env bash
# The window's trade-off: direct vs carpool with max_wait_ms 10 (the default) and 50, at 256 concurrent
# streams (two requests each, ramped in over 1 s) against carpool-sim --slots 256 --step-ms 20
# --answer-tokens 20:500 (a SIMULATOR). Prints loadgen's RESULT line and the sim's calls and prompts
# for each, ROUNDS times (2), side by side. About 2 minutes.
#   bash bench/window.sh            WAITS="10 50" STREAMS=256 ROUNDS=2 are the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
make -s all
WAITS=${WAITS:-"10 50"}
STREAMS=${STREAMS:-256}
ROUNDS=${ROUNDS:-2}
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
listening_port() { # the port a process of ours prints in "listening on HOST:PORT"
	for _ in $(seq 100); do
		grep -o 'listening on [^ ]*:[0-9]*' "$1" 2>/dev/null | head -1 | grep -o '[0-9]*$' && return 0
		sleep 0.05
	done
	echo "no listening line in $1" >&2
	return 1
}
for round in $(seq "$ROUNDS"); do
	for mode in direct $WAITS; do
		bin/carpool-sim --listen 127.0.0.1:0 --slots 256 --step-ms 20 --answer-tokens 20:500 >"$dir/sim.out" 2>&1 &
		sp=$!
		pids+=("$sp")
		simport=$(listening_port "$dir/sim.out")
		url=http://127.0.0.1:$simport
		cp=""
		if [ "$mode" != direct ]; then
			printf 'listen:\n  - address: 127.0.0.1:0\nupstreams:\n  - url: %s\nbatching:\n  max_wait_ms: %s\nlog:\n  level: info\n' \
				"$url" "$mode" >"$dir/c.yaml"
			bin/carpool -c "$dir/c.yaml" >"$dir/cp.out" 2>&1 &
			cp=$!
			pids+=("$cp")
			url=http://127.0.0.1:$(listening_port "$dir/cp.out")
			sleep 0.3
		fi
		r=$(bin/carpool-loadgen --url "$url" --concurrency "$STREAMS" --requests 2 --ramp-s 1 --answer-tokens 20:500 --quiet | tail -1)
		read -r calls prompts < <(sim_stats "$simport" completion_calls prompts)
		label=direct
		[ "$mode" != direct ] && label="carpool max_wait_ms $mode"
		echo "round $round, $label: $r | upstream calls $calls, prompts $prompts"
		[ -n "$cp" ] && kill "$cp"
		kill "$sp"
		wait 2>/dev/null || true
	done
done
