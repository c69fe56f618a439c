#!/usr/bin/env bash
# Latency / throughput of the two dispatch policies (adaptive, fixed) under open-loop load: requests
# arrive at a fixed rate (Poisson), the simulator is paced (one token per sequence every 20 ms), and
# carpool runs one worker with max_inflight 8 and max_batch_size 64. Writes bench/RESULTS-policy.md.
# The upstream is carpool-sim, a simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
RATES=${RATES:-"25 100 400 1200"}
SECONDS_PER_RATE=${SECONDS_PER_RATE:-4}
bench_start

start_sim "$work/sim.out" --step-ms 20
pids+=("$sim_pid")
for pol in adaptive fixed; do
	cat >"$work/$pol.yaml" <<YAML
workers: 1
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$sim_port
    max_inflight: 8
batching:
  policy: $pol
  max_wait_ms: 10
  max_batch_size: 64
YAML
	bin/carpool -c "$work/$pol.yaml" 2>"$work/$pol.log" &
	pids+=($!)
done
for pol in adaptive fixed; do wait_line "$work/$pol.log" ready; done
declare -A port=([direct]=$sim_port [adaptive]=$(port_in "$work/adaptive.log") [fixed]=$(port_in "$work/fixed.log"))
rows=""
fail=0
for rate in $RATES; do
	n=$((rate * SECONDS_PER_RATE))
	for via in direct adaptive fixed; do
		curl -s -X POST "http://127.0.0.1:$sim_port/stats/reset" >/dev/null
		r=$(bin/carpool-loadgen --url "http://127.0.0.1:${port[$via]}" --concurrency "$n" --requests 1 --rate "$rate" \
			--prefix "pc-$rate-$via-" --timeout-s 60 --quiet | tail -1) || fail=1
		read -r calls prompts < <(sim_stats "$sim_port" completion_calls prompts)
		ppc=$(awk -v p="$prompts" -v c="$calls" 'BEGIN { if (c > 0) printf "%.1f", p / c; else print "-" }')
		echo "rate $rate/s via $via: $r"
		rows+="| $rate | $via | $(field "$r" ttft_p50_ms) | $(field "$r" ttft_p99_ms) | $(field "$r" latency_p50_ms) | $(field "$r" tokens_per_s) | $calls | $ppc | $(field "$r" errors) | $(field "$r" mismatches) |"$'\n'
	done
done
{
	echo "# Dispatch policies under open-loop load"
	echo
	echo "Written by \`bash bench/policy-curve.sh\` on $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD)."
	echo "Requests arrive at a fixed average rate (Poisson) for ${SECONDS_PER_RATE} s; the simulator (carpool-sim, not a"
	echo "model) emits one token per sequence every 20 ms; carpool: one worker, max_inflight 8, max_batch_size 64;"
	echo "fixed: max_wait_ms 10. Every token is verified by the load generator. Times in ms."
	echo
	echo "| arrivals/s | via | TTFT p50 | TTFT p99 | latency p50 | tokens/s | upstream calls | prompts per call | errors | mismatches |"
	echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
	printf '%s' "$rows"
} > bench/RESULTS-policy.md

# Light load, measured closely: one request at a time (closed loop, one client) against a fast
# simulator (a decode step every 1 ms), so that time to first token is short and steady and what
# carpool adds shows; the same two carpools, each config's own simulator.
kill "${pids[@]}" 2>/dev/null || true
wait 2>/dev/null || true
pids=()
start_sim "$work/sim-light.out" --step-ms 1
pids+=("$sim_pid")
for pol in adaptive fixed; do
	sed "s#url: http://127.0.0.1:[0-9]*#url: http://127.0.0.1:$sim_port#" "$work/$pol.yaml" >"$work/$pol-light.yaml"
	start_carpool "$work/$pol-light.yaml" "$work/$pol-light.log"
	pids+=("$cp_pid")
	port[$pol]=$cp_port
done
port[direct]=$sim_port
light=""
for rep in 1 2 3; do
	for via in direct adaptive fixed; do
		r=$(bin/carpool-loadgen --url "http://127.0.0.1:${port[$via]}" --concurrency 1 --requests 300 --max-tokens 16 \
			--prefix "light-$rep-$via-" --timeout-s 60 --quiet | tail -1) || fail=1
		echo "light load, run $rep, via $via: $r"
		light+="$via $(field "$r" ttft_p50_ms) $(field "$r" ttft_p99_ms) $(field "$r" errors) $(field "$r" mismatches)"$'\n'
	done
done
{
	echo
	echo "## Light load: one request at a time"
	echo
	echo "Closed loop, one client, 300 requests per run, 3 runs each, interleaved; carpool-sim \`--step-ms 1\` (first"
	echo "token after about 2 ms). Medians of the runs' TTFT p50 / p99, and what carpool adds over direct."
	echo
	echo "| via | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | errors | mismatches |"
	echo "|---|---:|---:|---:|---:|---:|"
	printf '%s' "$light" | awk '
		{ p50[$1] = p50[$1] " " $2; p99[$1] = p99[$1] " " $3; err[$1] += $4; mis[$1] += $5 }
		function med(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } return a[int((n + 1) / 2)] }
		END {
			d = med(p50["direct"])
			split("direct adaptive fixed", order, " ")
			for (k = 1; k <= 3; k++) { v = order[k]; m = med(p50[v])
				printf "| %s | %.2f | %.2f | %s | %d | %d |\n", v, m, med(p99[v]), v == "direct" ? "-" : sprintf("%+.2f", m - d), err[v], mis[v] } }'
} >>bench/RESULTS-policy.md
cat bench/RESULTS-policy.md
exit "$fail"
