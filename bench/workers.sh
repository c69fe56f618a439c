#!/usr/bin/env bash
# How batches form across workers, measured: the same closed-loop streaming load through carpool with
# one worker, with two workers and one shared batch queue (batching.queue: shared, the default), and
# with two workers batching apart (per_worker) - at the same upstream budget (max_inflight 8 in all)
# and at 8 per worker. Paced (20 ms per decode step) and flood regimes, 256 and 1,024 streams.
# Reports carpool's CPU per streamed token, worker 0's share of it, prompts per upstream call,
# tokens/s and TTFT. Writes bench/RESULTS-workers.md. The upstream is carpool-sim, a simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
REPS=${REPS:-3}
CONCURRENCIES=${CONCURRENCIES:-"256 1024"}
bench_start

# name: workers queue max_inflight
declare -A MODE=([w1]="1 shared 8" [w2-shared]="2 shared 8" [w2-apart-4]="2 per_worker 4" [w2-apart-8]="2 per_worker 8")
ORDER="w1 w2-shared w2-apart-4 w2-apart-8"
declare -A LABEL=([w1]="1 worker" [w2-shared]="2 workers, shared queue, max_inflight 8"
	[w2-apart-4]="2 workers, per_worker, max_inflight 4 each (8 in all)"
	[w2-apart-8]="2 workers, per_worker, max_inflight 8 each (16 in all)")
HZ=$(getconf CLK_TCK)
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
reqs() { # regime conc: requests per client
	if [[ $1 == paced ]]; then (($2 <= 256)) && echo 16 || echo 8; else echo $((30720 / $2)); fi
}
raw=$work/raw.tsv
: >"$raw"
fail=0
for regime in paced flood; do
	step=$([[ $regime == paced ]] && echo 20 || echo 0)
	start_sim "$work/sim-$regime.out" --step-ms "$step"
	pids+=("$sim_pid")
	declare -A port=() pid=()
	for m in $ORDER; do
		read -r nw q mi <<<"${MODE[$m]}"
		cat >"$work/$m.yaml" <<YAML
workers: $nw
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$sim_port
    max_inflight: $mi
batching:
  policy: adaptive
  max_batch_size: 64
  queue: $q
limits:
  max_clients: 10000
  max_queue: 10000
YAML
		start_carpool "$work/$m.yaml" "$work/$m-$regime.log"
		pids+=("$cp_pid")
		port[$m]=$cp_port
		pid[$m]=$cp_pid
	done
	for conc in $CONCURRENCIES; do
		r=$(reqs "$regime" "$conc")
		for m in $ORDER; do # warm-up, not measured
			bin/carpool-loadgen --url "http://127.0.0.1:${port[$m]}" --concurrency "$conc" --requests 1 --prefix warm- --quiet >/dev/null 2>&1 || true
		done
		for rep in $(seq "$REPS"); do
			for m in $ORDER; do
				p=${pid[$m]}
				curl -s -X POST "http://127.0.0.1:$sim_port/stats/reset" >/dev/null
				c0=$(ticks "$p")
				w0=$(ticks "$p/task/$p")
				out=$(bin/carpool-loadgen --url "http://127.0.0.1:${port[$m]}" --concurrency "$conc" --requests "$r" \
					--max-tokens 16 --prefix "w-$rep-" --timeout-s 60 --quiet | tail -1) || fail=1
				c1=$(ticks "$p")
				w1=$(ticks "$p/task/$p")
				tok=$(field "$out" tokens)
				read -r calls prompts < <(sim_stats "$sim_port" completion_calls prompts)
				line=$(awk -v re="$regime" -v c="$conc" -v m="$m" -v dc=$((c1 - c0)) -v dw=$((w1 - w0)) -v hz="$HZ" \
					-v tok="$tok" -v calls="$calls" -v pr="$prompts" -v tps="$(field "$out" tokens_per_s)" \
					-v ttft="$(field "$out" ttft_p50_ms)" -v err="$(field "$out" errors)" -v mis="$(field "$out" mismatches)" \
					'BEGIN { printf "%s\t%s\t%s\t%.2f\t%.0f\t%.1f\t%.0f\t%.1f\t%d\t%d\n", re, c, m, dc * 1e6 / hz / tok,
						dc ? 100 * dw / dc : 0, pr / calls, tps, ttft, err, mis }')
				echo "$line" >>"$raw"
				echo "$line"
				[[ $(field "$out" errors) == 0 && $(field "$out" mismatches) == 0 ]] || fail=1
			done
		done
	done
	for m in $ORDER; do kill "${pid[$m]}"; done
	kill "$sim_pid"
	wait 2>/dev/null || true
done

med() { sort -g | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }
{
	echo "# Batches across workers: one shared queue or one per worker"
	echo
	echo "Written by \`bash bench/workers.sh\` on $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD); $(nproc) CPUs."
	echo "Closed loop (\`carpool-loadgen\`: C clients, each a keep-alive connection sending requests back to back, every token"
	echo "verified), streaming \`/v1/completions\`, max_tokens 16; paced: carpool-sim \`--step-ms 20\` (a simulator, not a"
	echo "model), flood: \`--step-ms 0\`. carpool: adaptive policy, max_batch_size 64. The four configurations run side by"
	echo "side, interleaved run by run; medians of $REPS runs. **CPU µs/token**: utime+stime of the whole carpool process per"
	echo "streamed token; **worker 0 share**: the part of it spent by worker 0's thread (which, with a shared queue, forms"
	echo "every batch and reads every upstream answer; each worker writes to its own clients)."
	echo
	echo "| regime | streams | carpool | CPU µs/token | worker 0 share | prompts per upstream call | tokens/s | TTFT p50 ms | errors + mismatches |"
	echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
	for regime in paced flood; do
		for conc in $CONCURRENCIES; do
			for m in $ORDER; do
				sel() { awk -F'\t' -v re="$regime" -v c="$conc" -v m="$m" -v k="$1" '$1 == re && $2 == c && $3 == m {print $k}' "$raw"; }
				bad=$(sel 9 | paste -sd+ | bc)
				bad=$((bad + $(sel 10 | paste -sd+ | bc)))
				echo "| $regime | $conc | ${LABEL[$m]} | $(sel 4 | med) | $(sel 5 | med) % | $(sel 6 | med) | $(sel 7 | med) | $(sel 8 | med) | $bad |"
			done
		done
	done
	echo
	echo "**The choice: \`batching.queue: shared\` is the default.** Batches form per key, and a key's requests arrive on"
	echo "whichever worker accepted the client, so batching apart splits every key's traffic N ways: at the same upstream"
	echo "budget (max_inflight 8 in all) calls carry fewer prompts and requests wait longer for a call; giving each worker"
	echo "the whole budget instead doubles the calls open upstream and halves their fill. The shared queue keeps one"
	echo "worker's fill and makes \`max_inflight\` and \`rate_limit_rpm\` mean the whole process; its price is the relay"
	echo "(each event for another worker's client is copied twice and handed over once per loop turn) - compare the CPU"
	echo "column of the shared rows with one worker's. Worker 0 forms every batch and reads every upstream answer; the"
	echo "client writes, most of the CPU, stay with the worker that holds each client."
	echo
	echo "Raw runs (regime, streams, configuration, CPU µs/token, worker 0 %, prompts/call, tokens/s, TTFT p50 ms, errors, mismatches):"
	echo
	echo '```'
	cat "$raw"
	echo '```'
} >bench/RESULTS-workers.md
cat bench/RESULTS-workers.md
exit "$fail"
