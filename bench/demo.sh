#!/usr/bin/env bash
# The demo: installs what is missing, builds, starts the simulated upstream (bench/sim.c — a
# SIMULATOR, not a language model) and carpool with its default config, fires the same burst of
# concurrent streaming clients straight at the simulator and then through carpool (every token
# verified), and prints what each side felt and what batching did.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
CLIENTS=${CLIENTS:-200}
bash scripts/install-deps.sh
plain_build

work=$(mktemp -d)
cleanup() { kill "${cp_pid:-}" "${sim_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# An upstream that decodes like vLLM: 256 sequence slots, one token per sequence every 20 ms, answers
# of 20 to 500 tokens (so a client kept waiting would show in its time to first token).
start_sim "$work/sim.out" --dialect vllm --slots 256 --step-ms 20 --call-ms 5 --answer-tokens 20:500

# carpool's defaults: only where to listen and the upstream.
default_config "$work/carpool.yaml" "$sim_port"
start_carpool "$work/carpool.yaml" "$work/carpool.log"

stat() { sim_stats "$sim_port" "$1"; }
# burst PORT: the same CLIENTS prompts each time, so both sides do exactly the same work
burst() {
	curl -s -X POST "http://127.0.0.1:$sim_port/stats/reset" >/dev/null
	bin/carpool-loadgen --url "http://127.0.0.1:$1" --concurrency "$CLIENTS" --requests 1 --answer-tokens 20:500 \
		--quiet | tail -1
}
show() { # RESULT-line
	awk -v a="$(field "$1" ttft_p50_ms)" -v b="$(field "$1" ttft_p99_ms)" -v t="$(field "$1" tokens_per_s)" \
		'BEGIN { printf "   time to first token p50 %.1f ms, p99 %.1f ms; %.0f tokens/s\n", a, b, t }'
}

echo "== $CLIENTS concurrent streaming clients (answers of 20-500 tokens, 20 ms per token, 256 slots),"
echo "   straight at the simulator"
direct=$(burst "$sim_port")
show "$direct"
echo "   upstream calls: $(stat completion_calls)"

echo "== the same clients through carpool (default config)"
via=$(burst "$cp_port")
show "$via"
calls=$(stat completion_calls)
echo "   upstream calls: $calls   prompts per call: $(awk -v p="$(stat prompts)" -v c="$calls" 'BEGIN { printf "%.1f", p / c }')   largest call: $(stat max_prompts_per_call) prompts"

echo "== carpool vs direct"
awk -v d50="$(field "$direct" ttft_p50_ms)" -v d99="$(field "$direct" ttft_p99_ms)" -v dt="$(field "$direct" tokens_per_s)" \
	-v c50="$(field "$via" ttft_p50_ms)" -v c99="$(field "$via" ttft_p99_ms)" -v ct="$(field "$via" tokens_per_s)" \
	'BEGIN { printf "   time to first token: p50 %+.1f ms, p99 %+.1f ms; tokens/s x %.3f\n", c50 - d50, c99 - d99, ct / dt }'
echo "   every token verified: mismatches direct=$(field "$direct" mismatches) carpool=$(field "$via" mismatches)"
