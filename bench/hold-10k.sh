#!/usr/bin/env bash
# 10,000 concurrent streaming clients through one carpool process (one worker): every token verified
# by the load generator, resident memory sampled while the streams are open. Writes
# bench/RESULTS-10k.md. The upstream is carpool-sim (a simulator) pacing one token a second, so that
# the streams stay open long enough to be counted.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
STREAMS=${STREAMS:-10000}
plain_build
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
cleanup() { kill "${cp_pid:-}" "${sim_pid:-}" "${lg_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start_sim "$work/sim.out" --step-ms 1000
cat >"$work/c.yaml" <<YAML
workers: 1
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$sim_port
    max_inflight: 16
batching:
  policy: fixed
  max_wait_ms: 200
  max_batch_size: 1024
limits:
  max_clients: $((STREAMS + 1000))
  max_queue: $((STREAMS + 1000))
timeouts:
  sse_keepalive_ms: 0
YAML
start_carpool "$work/c.yaml" "$work/carpool.log"
rss() { awk '/VmRSS/ {print $2}' "/proc/$cp_pid/status"; }
idle=$(rss)
bin/carpool-loadgen --url "http://127.0.0.1:$cp_port" --concurrency "$STREAMS" --requests 1 --timeout-s 120 --quiet \
	>"$work/lg.out" 2>&1 &
lg_pid=$!
best_open=0
best_rss=0
for _ in $(seq 40); do
	sleep 0.5
	open=$(curl -s "http://127.0.0.1:$cp_port/metrics" | awk '/^carpool_open_streams / {print $2}')
	r=$(rss)
	if [ "${open:-0}" -gt "$best_open" ]; then best_open=$open; best_rss=$r; fi
	kill -0 "$lg_pid" 2>/dev/null || break
done
wait "$lg_pid" && lg_rc=0 || lg_rc=$?
result=$(tail -1 "$work/lg.out")
per=$(awk -v a="$best_rss" -v b="$idle" -v n="$best_open" 'BEGIN { if (n > 0) printf "%.2f", (a - b) / n; else print "n/a" }')
{
	echo "# $STREAMS concurrent streams through one carpool process"
	echo
	echo "Written by \`bash bench/hold-10k.sh\` on $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD)."
	echo "Upstream: carpool-sim (a simulator), one token per second per sequence; carpool with one worker,"
	echo "fixed policy, max_batch_size 1024, max_inflight 16 (so every stream is inside an upstream call)."
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| load generator | \`$result\` |"
	echo "| load generator exit status | $lg_rc (0: every request completed, every token verified) |"
	echo "| carpool RSS idle | $idle KiB |"
	echo "| carpool RSS with the most streams open | $best_rss KiB |"
	echo "| streams open at that moment (carpool_open_streams) | $best_open |"
	echo "| **KiB per held stream** | **$per** |"
} > bench/RESULTS-10k.md
cat bench/RESULTS-10k.md
exit "$lg_rc"
