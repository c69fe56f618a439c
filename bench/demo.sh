#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts the simulated upstream (bench/sim.c — a
# SIMULATOR, not a language model) and carpool, fires a burst of concurrent streaming clients that
# verify every token, and prints what batching did.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CLIENTS=${CLIENTS:-200}
bash scripts/install-deps.sh
plain_build

work=$(mktemp -d)
cleanup() { kill "${cp_pid:-}" "${sim_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# A paced simulator: one decode step every 20 ms, like a GPU; a fixed cost per call.
start_sim "$work/sim.out" --dialect vllm --step-ms 20 --call-ms 5

cat >"$work/carpool.yaml" <<YAML
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$sim_port
    max_inflight: 4
batching:
  policy: adaptive
  max_batch_size: 64
YAML
start_carpool "$work/carpool.yaml" "$work/carpool.log"

stat() { curl -s "http://127.0.0.1:$sim_port/stats" | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

echo "== $CLIENTS concurrent streaming clients, straight at the simulator"
curl -s -X POST "http://127.0.0.1:$sim_port/stats/reset" >/dev/null
direct=$(bin/carpool-loadgen --url "http://127.0.0.1:$sim_port" --concurrency "$CLIENTS" --requests 1 --quiet | tail -1)
echo "   $direct"
echo "   upstream calls: $(stat completion_calls)"

echo "== the same burst through carpool"
curl -s -X POST "http://127.0.0.1:$sim_port/stats/reset" >/dev/null
via=$(bin/carpool-loadgen --url "http://127.0.0.1:$cp_port" --concurrency "$CLIENTS" --requests 1 --prefix via- --quiet | tail -1)
echo "   $via"
calls=$(stat completion_calls)
prompts=$(stat prompts)
echo "   client requests: $CLIENTS   upstream calls: $calls   prompts per call: $(awk "BEGIN{printf \"%.1f\", $prompts/$calls}")   largest call: $(stat max_prompts_per_call) prompts"
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo "   time to first token p50: direct $(field "$direct" ttft_p50_ms) ms, via carpool $(field "$via" ttft_p50_ms) ms"
echo "   every token verified: mismatches direct=$(field "$direct" mismatches) carpool=$(field "$via" mismatches)"
