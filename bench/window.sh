#!/usr/bin/env bash
# The window's trade-off: direct vs carpool with max_wait_ms 10 (the default) and 50, at 256 concurrent
# streams (two requests each, ramped in over 1 s) against carpool-sim --slots 256 --step-ms 20
# --answer-tokens 20:500 (a SIMULATOR). Prints loadgen's RESULT line and the sim's calls and prompts
# for each, ROUNDS times (2), side by side. About 2 minutes.
#   bash bench/window.sh            WAITS="10 50" STREAMS=256 ROUNDS=2 are the defaults
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
WAITS=${WAITS:-"10 50"}
STREAMS=${STREAMS:-256}
ROUNDS=${ROUNDS:-2}
bench_start
for round in $(seq "$ROUNDS"); do
	for mode in direct $WAITS; do
		start_sim "$work/sim.out" --slots 256 --step-ms 20 --answer-tokens 20:500
		pids+=("$sim_pid")
		port=$sim_port label=direct
		if [ "$mode" != direct ]; then
			printf 'listen:\n  - address: 127.0.0.1:0\nupstreams:\n  - url: http://127.0.0.1:%s\nbatching:\n  max_wait_ms: %s\n' \
				"$sim_port" "$mode" >"$work/c.yaml"
			start_carpool "$work/c.yaml" "$work/cp.log"
			pids+=("$cp_pid")
			port=$cp_port label="carpool max_wait_ms $mode"
		fi
		r=$(bin/carpool-loadgen --url "http://127.0.0.1:$port" --concurrency "$STREAMS" --requests 2 --ramp-s 1 \
			--answer-tokens 20:500 --quiet | tail -1)
		read -r calls prompts < <(sim_stats "$sim_port" completion_calls prompts)
		echo "round $round, $label: $r | upstream calls $calls, prompts $prompts"
		[ "$mode" != direct ] && kill "$cp_pid"
		kill "$sim_pid"
		wait 2>/dev/null || true
	done
done
