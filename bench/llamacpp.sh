#!/usr/bin/env bash
# carpool in front of a llama.cpp-like upstream, against the same clients sent straight to it.
# The upstream is carpool-sim (a SIMULATOR, not a model) set up the way llama-server b4748 handles
# connections (see bench/SIM.md): 4 slots, `Keep-Alive: timeout=5, max=100` advertised yet the
# connection closed after every streamed answer, 6 connections served at once (its HTTP threads;
# an idle kept-alive one holds its thread), a listen backlog of 5. carpool runs with its default
# config (only the upstream URL set), with keepalive_conns: 2 as configs/llamacpp-gateway.yaml has it,
# and with keepalive_ms: 0 (no connection kept). Clients: carpool-loadgen, streaming, every token
# verified; C clients each sending R requests one after another on a kept-alive connection, REPS runs
# of each. TARGETS picks among direct, carpool, carpool-kc2, carpool-ka0.
# Reports lost requests (errors + mismatches) and time to first token p50 / p99.
# CARPOOL_BEFORE=/path/to/carpool also measures another carpool build (e.g. one from before issue 13).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REPS=${REPS:-3}
LOADS=${LOADS:-"16x3 48x3"}
MAX_TOKENS=${MAX_TOKENS:-200}
bench_start

SIM_ARGS=(--dialect llamacpp --slots 4 --step-ms 1 --call-ms 1 --keep-alive 5 --close-after-stream=next
	--max-conns 6 --backlog 5)

# run TARGET_PORT C R: one loadgen run; prints "lost ttft_p50 ttft_p99 stale_retries"
run() {
	local out res
	out=$(bin/carpool-loadgen --url "http://127.0.0.1:$1" --concurrency "$2" --requests "$3" \
		--max-tokens "$MAX_TOKENS" --timeout-s 120 --max-details 0 --prefix "p$RANDOM-" 2>/dev/null || true)
	res=$(echo "$out" | grep '^RESULT' | tail -1)
	local req ok
	req=$(field "$res" requests)
	ok=$(field "$res" ok)
	echo "$((req - ok)) $(field "$res" ttft_p50_ms) $(field "$res" ttft_p99_ms) \
$(echo "$out" | sed -n 's/.*stale-connection retries: \([0-9]*\).*/\1/p')"
}

# carpool: the default config; carpool-ka0: with keepalive_ms: 0; carpool-kc2: keepalive_conns: 2
targets=${TARGETS:-"direct carpool carpool-ka0 carpool-kc2"}
[[ -n ${CARPOOL_BEFORE:-} ]] && targets="direct before ${targets#direct }"
printf '| load (clients x requests) | path | lost requests (%s runs) | TTFT p50 ms (median of runs) | TTFT p99 ms (median of runs) |\n' "$REPS"
printf '|---|---|---|---|---|\n'
for load in $LOADS; do
	c=${load%x*}
	r=${load#*x}
	for target in $targets; do
		lost=0
		p50s=()
		p99s=()
		for _ in $(seq "$REPS"); do
			# a fresh upstream each run: no connection or queue left over from the last one
			start_sim "$work/sim.out" "${SIM_ARGS[@]}"
			pids+=("$sim_pid")
			port=$sim_port
			if [[ $target != direct ]]; then
				printf 'listen:\n  - address: 127.0.0.1:0\nupstreams:\n  - url: http://127.0.0.1:%s\n' \
					"$sim_port" >"$work/carpool.yaml"
				[[ $target == carpool-ka0 ]] && echo '    keepalive_ms: 0' >>"$work/carpool.yaml"
				[[ $target == carpool-kc2 ]] && echo '    keepalive_conns: 2' >>"$work/carpool.yaml"
				CARPOOL_BIN=$([[ $target == before ]] && echo "$CARPOOL_BEFORE" || echo bin/carpool) \
					start_carpool "$work/carpool.yaml" "$work/carpool.log"
				pids+=("$cp_pid")
				port=$cp_port
			fi
			read -r l p50 p99 _ <<<"$(run "$port" "$c" "$r")"
			lost=$((lost + l))
			p50s+=("$p50")
			p99s+=("$p99")
			[[ $target != direct ]] && kill "$cp_pid" && wait "$cp_pid" 2>/dev/null || true
			kill "$sim_pid"
			wait "$sim_pid" 2>/dev/null || true
		done
		med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.0f", a[int((NR+1)/2)]}'; }
		printf '| %s | %s | %d of %d | %s | %s |\n' "$load" "$target" "$lost" "$((c * r * REPS))" \
			"$(med "${p50s[@]}")" "$(med "${p99s[@]}")"
	done
done
