#!/usr/bin/env bash
# Where a streamed token's cost goes in carpool: one worker, flood, 256 streams, 64-token answers, in
# two shapes: each answer written whole by the simulator (sim --burst: a client's answer in one
# upstream read) and interleaved (one token of every sequence per step). Three measures of the same
# load, each on a fresh carpool (the bench config: adaptive, max_inflight 8, max_batch_size 64) after
# one unmeasured warm-up pass:
#   1. CPU: carpool's run time around the load (schedstat, ns), split into user and kernel as its utime
#      and stime (/proc/PID/stat, clock ticks) split: µs per token.
#   2. System calls: `strace -f -c` attached to carpool (all its threads) for the load alone: calls
#      per token, in all and by call. strace slows every call down: it counts, its times mean nothing.
#   3. User instructions: carpool under `valgrind --tool=callgrind`; the counters are zeroed after the
#      warm-up and dumped after the load (callgrind_control), Ir ÷ tokens delivered, in all and by
#      function. Kernel work is not in Ir.
# Prints the tables and writes them to OUT (bench/RESULTS-profile.md), with issue 12's limits beside
# the figures: user instructions per token <= 1,500, system calls per token in flood <= 0.2.
#
# THE UPSTREAM IS A SIMULATOR (bench/sim.c), not a model. Loopback only. About a minute.
# Knobs: STREAMS (256), REQS (requests per client: 8), CG_REQS (the same under callgrind: 2), ANSWER
# (64 tokens), SHAPES ("burst interleaved"), OUT ("-": print only), CARPOOL_BIN (another build to
# profile; default bin/carpool), KEEP=1 (keep the callgrind and
# strace files in /tmp/carpool-profile/). Needs strace and valgrind (installed when missing, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
STREAMS=${STREAMS:-256}
REQS=${REQS:-8}
CG_REQS=${CG_REQS:-2}
ANSWER=${ANSWER:-64}
SHAPES=${SHAPES:-"burst interleaved"}
OUT=${OUT:-bench/RESULTS-profile.md}
for shape in $SHAPES; do
	[[ $shape == burst || $shape == interleaved ]] || { echo "SHAPES: burst and/or interleaved" >&2; exit 2; }
done
if ! command -v strace >/dev/null || ! command -v valgrind >/dev/null; then
	[[ $(id -u) == 0 ]] || { echo "need strace and valgrind (apt-get install strace valgrind)" >&2; exit 2; }
	echo "installing strace valgrind from Debian" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q strace valgrind >/dev/null
fi
bench_start
hz=$(getconf CLK_TCK)

# load PORT REQS PREFIX: one verified load; prints loadgen's RESULT line, fails on any error
load() {
	local r
	r=$(bin/carpool-loadgen --url "http://127.0.0.1:$1" --concurrency "$STREAMS" --requests "$2" \
		--max-tokens "$ANSWER" --answer-tokens "$ANSWER:$ANSWER" --prefix "$3" --timeout-s 300 --quiet | tail -1)
	[[ $(field "$r" errors) == 0 && $(field "$r" mismatches) == 0 && -n $(field "$r" tokens) ]] ||
		{ echo "load through carpool failed: $r" >&2; return 1; }
	echo "$r"
}
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; } # PID: "utime stime"
stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
# fresh_carpool LOG: a fresh carpool (CARPOOL_WRAP may wrap it), warmed up; sets cp_pid, cp_port
fresh_carpool() {
	start_carpool "$work/carpool.yaml" "$1"
	pids+=("$cp_pid")
	load "$cp_port" 1 warm- >/dev/null
}

declare -A CPU_TOK CPU_NS CPU_U CPU_S SC_TOK SC_N SC_ROWS CG_TOK CG_IR CG_ROWS
profile_shape() { # shape
	local shape=$1 r u0 s0 u1 s1 n0 n1 st_pid cg_out sim_args=(--step-ms 0 --answer-tokens "$ANSWER:$ANSWER")
	[[ $shape == interleaved ]] || sim_args+=(--burst)
	start_sim "$work/sim-$shape.out" "${sim_args[@]}"
	pids+=("$sim_pid")
	bench_config "$work/carpool.yaml" "$sim_port" adaptive 8 64 1

	# 1. CPU, user and kernel
	fresh_carpool "$work/cpu-$shape.log"
	read -r u0 s0 < <(cpu_ticks "$cp_pid")
	n0=$(cpu_ns "$cp_pid")
	r=$(load "$cp_port" "$REQS" cpu-)
	n1=$(cpu_ns "$cp_pid")
	read -r u1 s1 < <(cpu_ticks "$cp_pid")
	stop "$cp_pid"
	CPU_TOK[$shape]=$(field "$r" tokens) CPU_NS[$shape]=$((n1 - n0)) CPU_U[$shape]=$((u1 - u0)) CPU_S[$shape]=$((s1 - s0))
	echo "$shape, cpu: $r; utime $((u1 - u0)) stime $((s1 - s0)) ticks" >&2

	# 2. system calls: strace attached after the warm-up, for the load alone
	fresh_carpool "$work/strace-$shape.log"
	strace -f -c -o "$work/strace-$shape.txt" -p "$cp_pid" 2>"$work/strace-$shape.err" &
	st_pid=$!
	pids+=("$st_pid")
	wait_line "$work/strace-$shape.err" attached || true
	r=$(load "$cp_port" "$REQS" strace-)
	kill -INT "$st_pid"
	wait "$st_pid" 2>/dev/null || true
	stop "$cp_pid"
	SC_TOK[$shape]=$(field "$r" tokens)
	echo "$shape, strace: $r" >&2
	# strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall" lines, then a "total" line
	SC_N[$shape]=$(awk '$NF == "total" {print $4}' "$work/strace-$shape.txt")
	SC_ROWS[$shape]=$(awk -v tok="${SC_TOK[$shape]}" '$1 ~ /^[0-9.]+$/ && $NF != "total" {printf "%s %d %.4f\n", $NF, $4, $4 / tok}' \
		"$work/strace-$shape.txt" | sort -k2,2nr | awk 'NR <= 8')

	# 3. user instructions: callgrind zeroed after the warm-up, dumped after the load
	cg_out=$work/callgrind-$shape.out
	CARPOOL_WRAP="valgrind --tool=callgrind --callgrind-out-file=$cg_out" CARPOOL_WAIT_S=60 \
		fresh_carpool "$work/cg-$shape.log"
	callgrind_control -z "$cp_pid" >/dev/null 2>&1
	r=$(load "$cp_port" "$CG_REQS" cg-)
	callgrind_control -d "$cp_pid" >/dev/null 2>&1
	# that dump is $cg_out.1 (the one at exit holds what came after); its "summary:" (or "totals:")
	# line has the events in the order of "events:", Ir alone here
	for _ in $(seq 100); do grep -qs '^summary:\|^totals:' "$cg_out.1" && break; sleep 0.1; done
	stop "$cp_pid"
	CG_TOK[$shape]=$(field "$r" tokens)
	CG_IR[$shape]=$(awk '/^(summary|totals):/ {print $2; exit}' "$cg_out.1")
	echo "$shape, callgrind: $r" >&2
	# the functions with the most instructions of their own ("IR (PCT%) FILE:FUNCTION [OBJECT]"); the
	# call chain down to the event loop (main, event_base_dispatch, ...: 99% and more each) is left out
	CG_ROWS[$shape]=$(callgrind_annotate --inclusive=no --threshold=100 --auto=no "$cg_out.1" 2>/dev/null |
		sed -n '/file:function/,$p' | sed 's/( */(/' | awk -v tok="${CG_TOK[$shape]}" -v total="${CG_IR[$shape]}" '
			$2 ~ /^\(/ { ir = $1; gsub(",", "", ir); if (ir + 0 >= 0.99 * total) next
				fn = $3; sub(/^.*:/, "", fn); ob = $4; gsub(/[][]/, "", ob); sub(/^.*\//, "", ob)
				if (++n <= 12) printf "%s %s %.0f %.1f\n", fn, ob, ir / tok, 100 * ir / total }')
	if [[ ${KEEP:-0} == 1 ]]; then
		mkdir -p /tmp/carpool-profile
		cp "$cg_out.1" "/tmp/carpool-profile/callgrind-$shape.out"
		cp "$work/strace-$shape.txt" /tmp/carpool-profile/
	fi
	stop "$sim_pid"
}
for shape in $SHAPES; do profile_shape "$shape"; done

# ---------------------------------------------------------------- the tables
desc() { [[ $1 == burst ]] && echo "in one read (sim --burst)" || echo "interleaved"; }
{
	echo "# Where a streamed token's cost goes (bench/profile.sh)"
	echo
	echo "Written by \`bash bench/profile.sh\` on $(date -u '+%Y-%m-%d %H:%M:%S UTC'), git $(git rev-parse --short HEAD)$(git status --porcelain -- src include bench | grep -q . && echo ' (with uncommitted changes)');"
	echo "$(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end. carpool: one worker,"
	echo "adaptive, max_inflight 8, max_batch_size 64, in front of \`carpool-sim --step-ms 0 --answer-tokens $ANSWER:$ANSWER\`"
	echo "(a simulator; flood), $STREAMS streams, $ANSWER-token answers, written whole at once (\`--burst\`: a client's answer"
	echo "in one upstream read) or interleaved (one token of every sequence per step). Each measure is its own"
	echo "carpool, after one warm-up pass; $REQS requests per client ($CG_REQS under callgrind)."
	echo
	printf '| measure |'
	for shape in $SHAPES; do printf ' %s: per token |' "$(desc "$shape")"; done
	printf " issue 12's limit |\n|---|"
	for shape in $SHAPES; do printf -- '---:|'; done
	echo '---|'
	row() { # label limit awk-expression-of(shape)
		local label=$1 limit=$2 expr=$3 shape
		printf '| %s |' "$label"
		for shape in $SHAPES; do
			awk -v tok="${CPU_TOK[$shape]}" -v ns="${CPU_NS[$shape]}" -v u="${CPU_U[$shape]}" -v s="${CPU_S[$shape]}" \
				-v sct="${SC_TOK[$shape]}" -v scn="${SC_N[$shape]:-0}" -v cgt="${CG_TOK[$shape]}" -v ir="${CG_IR[$shape]:-0}" \
				"BEGIN { printf \" %s |\", $expr }"
		done
		echo " $limit |"
	}
	row "CPU, user" "" 'sprintf("%.3f µs", u + s ? ns / 1e3 / tok * u / (u + s) : 0)'
	row "CPU, kernel" "" 'sprintf("%.3f µs", u + s ? ns / 1e3 / tok * s / (u + s) : 0)'
	row "CPU, all" "0.45 µs (flood in one read, \`make bench\`)" 'sprintf("%.3f µs (%.0f%% kernel)", ns / 1e3 / tok, u + s ? 100 * s / (u + s) : 0)'
	row "system calls (strace -f -c)" "0.2 (flood)" 'sprintf("%.3f (%d for %d tokens)", scn / sct, scn, sct)'
	row "user instructions (callgrind Ir)" "1,500" 'sprintf("%.0f (%.0f for %d tokens)", ir / cgt, ir, cgt)'
	echo
	echo "CPU: the scheduler's run time of carpool's threads (/proc/PID/task/*/schedstat, ns), split between user"
	echo "and kernel as utime and stime split ($(for sh in $SHAPES; do printf '%s: %s and %s ticks of 1/%s s; ' "$sh" "${CPU_U[$sh]}" "${CPU_S[$sh]}" "$hz"; done)"
	echo "the split is as coarse as that). strace counts every call of every thread of carpool while the load"
	echo "runs; callgrind counts user-space instructions only, from the zeroing after the warm-up to the dump"
	echo "after the load."
	for shape in $SHAPES; do
		echo
		echo "### $(desc "$shape"): system calls and instructions by where they go"
		echo
		echo "| call | calls | per token |"
		echo "|---|---:|---:|"
		while read -r name calls per; do echo "| $name | $calls | $per |"; done <<<"${SC_ROWS[$shape]}"
		echo
		echo "| function (own instructions) | object | Ir per token | share |"
		echo "|---|---|---:|---:|"
		while read -r fn ob per pct; do echo "| \`$fn\` | $ob | $per | $pct% |"; done <<<"${CG_ROWS[$shape]}"
	done
	echo
	echo "For the lines behind the instructions: KEEP=1, then \`callgrind_annotate /tmp/carpool-profile/callgrind-SHAPE.out\`."
} >"$work/table.md"
cat "$work/table.md"
[[ $OUT == - ]] || cp "$work/table.md" "$OUT"
