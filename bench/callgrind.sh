#!/usr/bin/env bash
# User-space instructions per streamed token in carpool (issue 12): one worker in front of the
# simulator in flood mode (--step-ms 0), under valgrind's callgrind, driven by carpool-loadgen.
# Counting is switched on after one warm-up request and off after the load, so start-up, shutdown and
# what runs once per process are left out; the figure is Ir / tokens the load generator received
# and verified.
#
#   bash bench/callgrind.sh            # prints Ir, tokens, Ir per token and the top functions
#
# Knobs (environment): STREAMS (loadgen concurrency, 128), REQS (requests per stream, 2),
# TOKENS (every answer's length, 64), DIALECT (sim and carpool dialect, vllm), TOP (functions shown,
# 30), OUT (keep callgrind.out here; default: a temporary directory, removed).
# The loadgen's own counts come from its RESULT line; every token is verified (mismatches=0) or
# the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

STREAMS=${STREAMS:-128}
REQS=${REQS:-2}
TOKENS=${TOKENS:-64}
DIALECT=${DIALECT:-vllm}
TOP=${TOP:-30}
command -v valgrind >/dev/null && command -v callgrind_annotate >/dev/null && command -v callgrind_control >/dev/null ||
	{ echo "needs valgrind (apt-get install valgrind)" >&2; exit 2; }

bench_start
start_sim "$work/sim.log" --step-ms 0 --dialect "$DIALECT" --answer-tokens "$TOKENS:$TOKENS"
pids+=("$sim_pid")
cat >"$work/carpool.yaml" <<YAML
workers: 1
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$sim_port
    dialect: $DIALECT
log:
  level: info
YAML
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$work/callgrind.out" \
	bin/carpool -c "$work/carpool.yaml" 2>"$work/carpool.log" &
cp_pid=$!
pids+=("$cp_pid")
for _ in $(seq 300); do grep -q 'listening on 127.0.0.1:' "$work/carpool.log" && break; sleep 0.1; done
cp_port=$(port_in "$work/carpool.log" || true)
[[ -n $cp_port ]] || { cat "$work/carpool.log" >&2; exit 1; }
# one request first, then counting switched on (instrumentation is off until then): what runs once
# per process (OpenSSL seeding its random generator for the first request id, about 8 M
# instructions; the first connections) is left out
bin/carpool-loadgen --url "http://127.0.0.1:$cp_port" --concurrency 1 --requests 1 --max-tokens "$TOKENS" \
	--answer-tokens "$TOKENS:$TOKENS" --quiet >/dev/null
# valgrind takes a command when the program runs: a /healthz turns the loop (and costs next to nothing)
callgrind_control -i on "$cp_pid" >/dev/null 2>&1
curl -s -o /dev/null "http://127.0.0.1:$cp_port/healthz"
result=$(bin/carpool-loadgen --url "http://127.0.0.1:$cp_port" --concurrency "$STREAMS" --requests "$REQS" \
	--max-tokens "$TOKENS" --answer-tokens "$TOKENS:$TOKENS" --timeout-s 600 --quiet)
callgrind_control -i off "$cp_pid" >/dev/null 2>&1
curl -s -o /dev/null "http://127.0.0.1:$cp_port/healthz"
kill -INT "$cp_pid"
wait "$cp_pid" || true
echo "$result"
tokens=$(grep -o 'tokens=[0-9]*' <<<"$result" | head -1 | cut -d= -f2)
grep -q ' mismatches=0 ' <<<"$result" && grep -q ' errors=0 ' <<<"$result" ||
	{ echo "the load did not complete cleanly" >&2; exit 1; }
calls=$(($(sim_stats "$sim_port" completion_calls) - 1)) # but the warm-up's
ir=$(callgrind_annotate "$work/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !ir {gsub(",", "", $1); ir = $1} END {print ir}')
echo "streams=$STREAMS requests=$((STREAMS * REQS)) tokens=$tokens upstream_calls=$calls dialect=$DIALECT"
awk -v ir="$ir" -v t="$tokens" -v c="$calls" -v r="$((STREAMS * REQS))" 'BEGIN {
	printf "Ir=%d  Ir/token=%.0f  Ir/request=%.0f  Ir/call=%.0f\n", ir, ir / t, ir / r, ir / c }'
echo "--- top functions, exclusive Ir"
callgrind_annotate "$work/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n "2,$((TOP + 1))p" || true
echo "--- top functions, inclusive Ir"
callgrind_annotate --inclusive=yes "$work/callgrind.out" 2>/dev/null | sed -n '/file:function/,$p' | sed -n "2,$((TOP + 1))p" || true
if [[ -n ${OUT:-} ]]; then cp "$work/callgrind.out" "$OUT"; echo "profile kept in $OUT"; fi
