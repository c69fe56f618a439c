#!/usr/bin/env bash
# carpool benchmark: the same streaming load (i) straight at the simulator, (ii) through nginx as a
# plain streaming reverse proxy and (iii) through carpool, at several concurrencies, in these regimes:
#   paced           a decode step every 20 ms, answers of 3..16 tokens (max_tokens 16)
#   flood           no delay between steps, the same short answers, tokens of a call interleaved
#   paced-64        paced, every answer 64 tokens (max_tokens 64)
#   flood-64        flood, 64-token answers, interleaved (one token of each sequence per step)
#   flood-64-burst  flood, 64-token answers, each written whole at once (sim --burst): a client's
#                   answer in one upstream read
# In the 64-token regimes (iv) carpool with batching off (max_batch_size 1) runs beside the batched
# one, to check that a batched call costs no more per token than single ones. Measures CPU per
# streamed token of the proxy process, time-to-first-token added over direct, tokens/s, errors and
# token mismatches, carpool's prompts per upstream call, RSS, the memory cost of a held stream, and
# each cell's floor: one write() per token event (and the same sends through io_uring, one submit per
# step). Writes bench/RESULTS.md and bench/results.png (OUT moves them).
#
# THE UPSTREAM IS A SIMULATOR (bench/sim.c), not a model: these numbers measure the proxies, not
# inference. Loopback only.
#
# Knobs (environment): REPS (runs per cell, default 3, at least 3), CONCURRENCIES (short answers,
# "64 256 1024"), LONG_PACED_CONCURRENCIES ("256 1024"), LONG_FLOOD_CONCURRENCIES ("256"),
# REGIMES (which of the above, in order; default all), HOLD_STREAMS (streams held open for the memory
# figure, 1000), CARPOOL_WORKERS (carpool event-loop threads when the binary has the `workers` key;
# default 1, like nginx's worker_processes 1), KEEP_WORK=1 (keep the temp dir), OUT (the report,
# bench/RESULTS.md; the plot goes beside it as results.png), CARPOOL_BIN (the carpool binary to
# measure, default bin/carpool: another build, side by side with this tree's tools).
# QUICK=1: a check of the tooling, not figures: one run per cell, 256 streams only, a quarter of the
# flood load, 1 s floors, 200 held streams; the report goes to /tmp/carpool-bench-quick.md unless OUT
# says otherwise, and says it is a quick run.
# Exit status: 0 when every request of every run completed and matched; 1 otherwise (RESULTS.md is
# written either way and says what failed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

. bench/lib.sh # sim_stats; this script's own start_sim / start_carpool (port files, PIDS) replace lib.sh's

QUICK=${QUICK:-0}
if [[ $QUICK == 1 ]]; then
	REPS=${REPS:-1}
	CONCURRENCIES=${CONCURRENCIES:-256}
	LONG_PACED_CONCURRENCIES=${LONG_PACED_CONCURRENCIES:-256}
	HOLD_STREAMS=${HOLD_STREAMS:-200}
	FLOOD_TOTAL=${FLOOD_TOTAL:-7680}
	FLOOR_S=${FLOOR_S:-1}
	OUT=${OUT:-/tmp/carpool-bench-quick.md}
fi
REPS=${REPS:-3}
CONCURRENCIES=${CONCURRENCIES:-"64 256 1024"}
LONG_PACED_CONCURRENCIES=${LONG_PACED_CONCURRENCIES:-"256 1024"}
LONG_FLOOD_CONCURRENCIES=${LONG_FLOOD_CONCURRENCIES:-256}
REGIMES=${REGIMES:-"paced flood paced-64 flood-64 flood-64-burst"}
HOLD_STREAMS=${HOLD_STREAMS:-1000}
OUT=${OUT:-bench/RESULTS.md}
FLOOD_TOTAL=${FLOOD_TOTAL:-30720} # flood: requests per run with short answers (about 290,000 tokens); as many tokens with long ones
FLOOR_S=${FLOOR_S:-3}             # seconds of writing per floor run
PACED_STEP_MS=20
HOLD_MAX_TOKENS=16
CP_MAX_INFLIGHT=8
CP_MAX_BATCH=64
CP_POLICY=adaptive
LOADGEN_TIMEOUT_S=30
CARPOOL_WORKERS=${CARPOOL_WORKERS:-1}
((REPS >= 3 || QUICK == 1)) || { echo "REPS must be at least 3 (medians of >= 3 runs; QUICK=1 for a check of the tooling)" >&2; exit 2; }

# The regimes: decode step (ms), the sim's answer lengths (--answer-tokens), max_tokens, concurrencies,
# extra simulator arguments, whether carpool with batching off runs too, and a title.
declare -A R_STEP R_ANSWERS R_MAXTOK R_CONC R_SIMARGS R_SINGLE R_TITLE
regime_def() { # name step answers max_tokens concurrencies sim_args single title
	R_STEP[$1]=$2 R_ANSWERS[$1]=$3 R_MAXTOK[$1]=$4 R_CONC[$1]=$5 R_SIMARGS[$1]=$6 R_SINGLE[$1]=$7 R_TITLE[$1]=$8
}
regime_def paced "$PACED_STEP_MS" 3:16 16 "$CONCURRENCIES" "" 0 "Paced regime (sim --step-ms 20: one decode step every 20 ms; answers of 3..16 tokens)"
regime_def flood 0 3:16 16 "$CONCURRENCIES" "" 0 "Flood regime (sim --step-ms 0: no delay; CPU-bound; answers of 3..16 tokens, interleaved)"
regime_def paced-64 "$PACED_STEP_MS" 64:64 64 "$LONG_PACED_CONCURRENCIES" "" 1 "Paced, 64-token answers (sim --step-ms 20 --answer-tokens 64:64)"
regime_def flood-64 0 64:64 64 "$LONG_FLOOD_CONCURRENCIES" "" 1 "Flood, 64-token answers, interleaved (sim --step-ms 0 --answer-tokens 64:64)"
regime_def flood-64-burst 0 64:64 64 "$LONG_FLOOD_CONCURRENCIES" --burst 1 "Flood, 64-token answers in one read (sim --step-ms 0 --answer-tokens 64:64 --burst)"
for regime in $REGIMES; do
	[[ -n ${R_STEP[$regime]+x} ]] || { echo "unknown regime $regime (paced flood paced-64 flood-64 flood-64-burst)" >&2; exit 2; }
done
# The floor a regime is held against: named as the short-answer regime of the same pacing (the floor
# does not depend on answer lengths), one event per write; in one read, a client's whole answer per
# write (64 events), as carpool can send an answer it got in one read.
declare -A FLOOR_STEP=([paced]=$PACED_STEP_MS [flood]=0 [flood-burst]=0) FLOOR_EPW=([paced]=1 [flood]=1 [flood-burst]=64)
floor_regime() {
	if [[ ${R_SIMARGS[$1]} == *--burst* ]]; then echo flood-burst; elif [[ ${R_STEP[$1]} == 0 ]]; then echo flood; else echo paced; fi
}
proxies_of() { # regime: the proxies measured in it
	echo "direct nginx carpool$([[ ${R_SINGLE[$1]} == 1 ]] && echo " carpool-single")"
}

T0=$(date +%s.%N)
el() { awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%6.1fs", t1-t0}'; }
say() { echo "[$(el)] $*"; }

# Requests per client for a run: paced runs last a few seconds each (a short request takes ~0.2 s at
# 20 ms/step, a 64-token one ~1.3 s), with enough tokens at low concurrency for the CPU figure to
# settle; flood runs stream about as many tokens as FLOOD_TOTAL short requests (mean 9.5 tokens).
reqs_per_client() { # regime conc
	local long=0
	[[ ${R_MAXTOK[$1]} == 64 ]] && long=1
	if [[ ${R_STEP[$1]} != 0 ]]; then
		if ((long)); then
			(($2 <= 256)) && echo 3 || echo 2
		elif (($2 <= 64)); then echo 30; elif (($2 <= 256)); then echo 16; else echo 8; fi
	else
		local r=$((long ? FLOOD_TOTAL * 95 / 640 / $2 : FLOOD_TOTAL / $2))
		((r >= 1)) || r=1
		echo "$r"
	fi
}

# ------------------------------------------------------------------ tools
NGINX=""
find_nginx() { NGINX=$(command -v nginx 2>/dev/null || true); [[ -n $NGINX ]] || { [[ -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx; } || true; }
find_nginx
need=()
[[ -n $NGINX ]] || need+=(nginx-light)
command -v gnuplot >/dev/null 2>&1 || need+=(gnuplot-nox)
if ((${#need[@]})); then
	say "installing ${need[*]} from Debian"
	if [[ $(id -u) != 0 ]]; then
		echo "need root to install ${need[*]} (or install them: apt-get install -y nginx-light gnuplot-nox)" >&2
		exit 2
	fi
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -q "${need[@]}" >/dev/null 2>&1; then
		apt-get update -q >/dev/null 2>&1 || true
		if ! apt-get install -y -q "${need[@]}" >/dev/null 2>&1; then
			# older/other releases: nginx instead of nginx-light
			alt=("${need[@]/nginx-light/nginx}")
			apt-get install -y -q "${alt[@]}" >/dev/null
		fi
	fi
	find_nginx
fi
[[ -n $NGINX ]] || { echo "nginx not found after install" >&2; exit 2; }
command -v gnuplot >/dev/null || { echo "gnuplot not found after install" >&2; exit 2; }

say "building (make all)"
plain_build

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
CLK_TCK=$(getconf CLK_TCK)
if ((NOFILE < 4 * 1024 + 64)); then
	echo "open-file limit $NOFILE is too low for 1,024 streams" >&2
	exit 2
fi

WORK=$(mktemp -d /tmp/carpool-bench.XXXXXX)
# Snapshot the binaries: the whole run measures one build even if bin/ is rebuilt meanwhile.
mkdir -p "$WORK/bin"
cp bin/carpool-sim bin/carpool-loadgen bin/carpool-writefloor "$WORK/bin/"
cp "${CARPOOL_BIN:-bin/carpool}" "$WORK/bin/carpool"
BIN=$WORK/bin
CARPOOL_SHA=$(sha256sum "$BIN/carpool" | cut -c1-16)
# `workers` (event-loop threads) exists only in newer builds; pin it when the binary knows it.
WORKERS_LINE=""
printf 'workers: %s\nlisten:\n  - address: 127.0.0.1:0\nupstreams:\n  - url: http://127.0.0.1:9\n' "$CARPOOL_WORKERS" >"$WORK/probe.yaml"
if "$BIN/carpool" --check-config -c "$WORK/probe.yaml" >/dev/null 2>&1; then
	WORKERS_LINE="workers: $CARPOOL_WORKERS"
fi
RAW=$WORK/runs.tsv
RSS=$WORK/rss.tsv
MEM=$WORK/mem.tsv
FLOOR=$WORK/floor.txt
: >"$FLOOR"
FAILS=$WORK/failures.md
: >"$FAILS"
printf 'regime\tconc\trep\tproxy\treqs_per_client\trequests\tok\terrors\tmismatches\ttokens\telapsed_s\ttokens_per_s\tttft_p50_ms\tttft_p99_ms\tgap_p99_ms\tlatency_p50_ms\tlatency_p99_ms\tproxy_us_per_tok\tsim_us_per_tok\tupstream_calls\tupstream_prompts\tmax_prompts_per_call\tloadgen_rc\n' >"$RAW"
printf 'regime\tconc\tproxy\tpeak_rss_kib\n' >"$RSS"
PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	if [[ ${KEEP_WORK:-0} == 1 || -s $FAILS ]]; then
		echo "work directory kept: $WORK" >&2
	else
		rm -rf "$WORK"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ process helpers
status_kib() { # FIELD pids...: sum of a /proc/PID/status field (VmRSS, VmHWM) in KiB
	local f=$1 s=0 p v
	shift
	for p in "$@"; do
		v=$(awk -v f="$f:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null) || v=0
		s=$((s + ${v:-0}))
	done
	echo "$s"
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null || return 1; done; }
listening() { [[ -n $(ss -Htln "sport = :$1" 2>/dev/null) ]]; }
stop_pid() { # pid: SIGTERM, wait up to 5 s, then SIGKILL
	local p=$1 i
	kill "$p" 2>/dev/null || return 0
	for i in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
	kill -9 "$p" 2>/dev/null || true
	wait "$p" 2>/dev/null || true
}

SIM_PID="" SIM_PORT=""
start_sim() { # dir step_ms [sim args...]
	local d=$1 step=$2 i
	shift 2
	rm -f "$d/sim.port"
	"$BIN/carpool-sim" --listen 127.0.0.1:0 --step-ms "$step" --port-file "$d/sim.port" "$@" >"$d/sim.log" 2>&1 &
	SIM_PID=$!
	PIDS+=("$SIM_PID")
	for i in $(seq 100); do [[ -s $d/sim.port ]] && break; sleep 0.05; done
	SIM_PORT=$(cat "$d/sim.port")
}

CP_PID="" CP_PORT=""
write_cp_config() { # file policy max_inflight [max_batch_size]
	bench_config "$1" "$SIM_PORT" "$2" "$3" "${4:-$CP_MAX_BATCH}" "${WORKERS_LINE:+$CARPOOL_WORKERS}"
}
start_carpool() { # dir [policy] [max_inflight] [max_batch_size] [name: DIR/NAME.yaml, DIR/NAME.log]
	local d=$1 name=${5:-carpool} i
	write_cp_config "$d/$name.yaml" "${2:-$CP_POLICY}" "${3:-$CP_MAX_INFLIGHT}" "${4:-$CP_MAX_BATCH}"
	"$BIN/carpool" -c "$d/$name.yaml" 2>"$d/$name.log" &
	CP_PID=$!
	PIDS+=("$CP_PID")
	for i in $(seq 100); do grep -q ' ready ' "$d/$name.log" 2>/dev/null && break; sleep 0.05; done
	CP_PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$d/$name.log" | head -1 | grep -o '[0-9]*$')
	[[ -n $CP_PORT ]] || { echo "carpool did not start:" >&2; cat "$d/$name.log" >&2; exit 1; }
}

NG_MASTER="" NG_WORKER="" NG_PORT=""
start_nginx() { # dir
	local d=$1 try i user_line=""
	[[ $(id -u) == 0 ]] && user_line="user root;"
	mkdir -p "$d/nginx"
	for try in 1 2 3 4 5 6 7 8; do
		NG_PORT=$((20000 + RANDOM % 12000)) # below the ephemeral range, so no clash with client ports
		listening "$NG_PORT" && continue
		sed -e "s#@PREFIX@#$d/nginx#g" -e "s#@PORT@#$NG_PORT#g" -e "s#@SIM_PORT@#$SIM_PORT#g" \
			-e "s#@NOFILE@#$NOFILE#g" -e "s#@WORKER_CONNECTIONS@#$((NOFILE > 16384 ? 16384 : NOFILE - 64))#g" \
			-e "s#@USER_LINE@#$user_line#g" "$ROOT/bench/nginx.conf.in" >"$d/nginx/nginx.conf"
		"$NGINX" -p "$d/nginx" -c "$d/nginx/nginx.conf" -e "$d/nginx/error.log" 2>>"$d/nginx/error.log" &
		NG_MASTER=$!
		PIDS+=("$NG_MASTER")
		for i in $(seq 100); do
			alive "$NG_MASTER" || break
			NG_WORKER=$(pgrep -P "$NG_MASTER" | head -1 || true)
			[[ -n $NG_WORKER ]] && listening "$NG_PORT" && return 0
			sleep 0.05
		done
		stop_pid "$NG_MASTER"
	done
	echo "nginx did not start:" >&2
	cat "$d/nginx/error.log" >&2
	exit 1
}

# ------------------------------------------------------------------ machine
NPROC=$(nproc)
CPU_MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
KERNEL=$(uname -srm)
MEM_TOTAL=$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
DATE=$(date -u '+%Y-%m-%d %H:%M:%S UTC')
NGINX_VERSION=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
GNUPLOT_VERSION=$(gnuplot --version)
CC_VERSION=$(${CC:-cc} --version | head -1)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
GIT_DIRTY=$(git status --porcelain -- src include bench/sim.c bench/loadgen.c 2>/dev/null | grep -q . && echo " (+ uncommitted changes)" || true)

TOTAL_RUNS=0
for regime in $REGIMES; do
	for _ in ${R_CONC[$regime]}; do
		read -ra measured <<<"$(proxies_of "$regime")"
		TOTAL_RUNS=$((TOTAL_RUNS + REPS * ${#measured[@]}))
	done
done
say "carpool benchmark: ${NPROC} CPUs ($CPU_MODEL), regimes: $REGIMES, $REPS runs per cell, $TOTAL_RUNS measured runs + floors + memory test"
say "work directory: $WORK"

# ------------------------------------------------------------------ one measured run
RUN_NO=0
ANY_FAIL=0
measure() { # regime conc rep proxy url pids...
	local regime=$1 conc=$2 rep=$3 proxy=$4 url=$5
	shift 5
	local pids=("$@") r out lg_rc=0 c0 c1 s0 s1 calls prompts maxp
	local lg_args=(--max-tokens "${R_MAXTOK[$regime]}" --answer-tokens "${R_ANSWERS[$regime]}")
	r=$(reqs_per_client "$regime" "$conc")
	RUN_NO=$((RUN_NO + 1))
	curl -s -m 5 -X POST "http://127.0.0.1:$SIM_PORT/stats/reset" >/dev/null
	local log="$WORK/$regime-c$conc-r$rep-$proxy.loadgen"
	c0=$(cpu_ns "${pids[@]}")
	s0=$(cpu_ns "$SIM_PID")
	"$BIN/carpool-loadgen" --url "$url" --concurrency "$conc" --requests "$r" "${lg_args[@]}" \
		--timeout-s "$LOADGEN_TIMEOUT_S" --quiet >"$log.out" 2>"$log.err" || lg_rc=$?
	c1=$(cpu_ns "${pids[@]}")
	s1=$(cpu_ns "$SIM_PID")
	read -r calls prompts maxp < <(sim_stats "$SIM_PORT" completion_calls prompts max_prompts_per_call 2>/dev/null || true) || true
	out=$(grep '^RESULT ' "$log.out" | tail -1 || true)
	[[ -n $out ]] || out="RESULT requests=$((conc * r)) ok=0 errors=$((conc * r)) mismatches=0 tokens=0 elapsed_s=0 tokens_per_s=0 ttft_p50_ms=0 ttft_p99_ms=0 gap_p99_ms=0 latency_p50_ms=0 latency_p99_ms=0"
	local line
	line=$(echo "$out" | awk -v regime="$regime" -v conc="$conc" -v rep="$rep" -v proxy="$proxy" -v r="$r" \
		-v dc=$((c1 - c0)) -v ds=$((s1 - s0)) -v calls="${calls:-0}" \
		-v prompts="${prompts:-0}" -v maxp="${maxp:-0}" -v rc="$lg_rc" '
		{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
		END {
			tok = v["tokens"] + 0
			pu = (proxy == "direct" || tok == 0) ? "-" : sprintf("%.3f", dc / 1e3 / tok)
			su = tok == 0 ? "-" : sprintf("%.3f", ds / 1e3 / tok)
			printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
				regime, conc, rep, proxy, r, v["requests"], v["ok"], v["errors"], v["mismatches"], v["tokens"],
				v["elapsed_s"], v["tokens_per_s"], v["ttft_p50_ms"], v["ttft_p99_ms"], v["gap_p99_ms"],
				v["latency_p50_ms"], v["latency_p99_ms"], pu, su, calls + 0, prompts + 0, maxp + 0, rc
		}')
	echo "$line" >>"$RAW"
	local errs mism
	errs=$(echo "$line" | cut -f8)
	mism=$(echo "$line" | cut -f9)
	local dead=""
	alive "$SIM_PID" || dead+=" simulator"
	alive "${pids[@]}" || dead+=" $proxy"
	say "[$RUN_NO/$TOTAL_RUNS] $regime C=$conc run $rep $(printf '%-14s' "$proxy") $(echo "$line" | awk -F'\t' '{printf "%6.2fs  %8.0f tok/s  ttft_p50 %7.1f ms  proxy %s us/tok  calls %s  err %s mis %s", $11, $12, $13, $18, $20, $8, $9}')${dead:+  DIED:$dead}"
	if [[ $lg_rc != 0 || $errs != 0 || $mism != 0 || -n $dead ]]; then
		ANY_FAIL=1
		{
			echo "### $regime, concurrency $conc, run $rep, via $proxy"
			echo
			echo "- loadgen: \`bin/carpool-loadgen --url $url --concurrency $conc --requests $r ${lg_args[*]} --timeout-s $LOADGEN_TIMEOUT_S --quiet\` → exit $lg_rc, errors $errs, mismatches $mism${dead:+; process(es) gone afterwards:$dead}"
			echo "- simulator: \`bin/carpool-sim --step-ms ${R_STEP[$regime]} --answer-tokens ${R_ANSWERS[$regime]}${R_SIMARGS[$regime]:+ ${R_SIMARGS[$regime]}}\`"
			echo
			echo '```'
			echo "# loadgen stderr (head)"
			head -8 "$log.err"
			if [[ $proxy == carpool* ]]; then
				echo "# $proxy log (tail)"
				tail -15 "$CELL/$proxy.log"
			elif [[ $proxy == nginx ]]; then
				echo "# nginx error.log (tail)"
				tail -8 "$CELL/nginx/error.log" 2>/dev/null || true
			fi
			if [[ $dead == *simulator* ]]; then
				echo "# simulator log (tail)"
				tail -8 "$CELL/sim.log"
			fi
			echo '```'
			echo
		} >>"$FAILS"
	fi
}

# ------------------------------------------------------------------ the matrix
floor_runs() { # floor conc: that floor (FLOOR_STEP, FLOOR_EPW) at C connections, write() and io_uring, REPS runs each
	local fl=$1 conc=$2 rep io
	# The CPU one write() of token events to each of C loopback clients costs the writer, with nothing
	# else (bench/writefloor.c), and the same sends submitted together through io_uring.
	for rep in $(seq "$REPS"); do
		for io in write uring; do
			"$BIN/carpool-writefloor" --conns "$conc" --step-ms "${FLOOR_STEP[$fl]}" --events-per-write "${FLOOR_EPW[$fl]}" \
				--duration-s "$FLOOR_S" --io "$io" 2>/dev/null | sed -n "s/^RESULT /regime=$fl conc=$conc /p" >>"$FLOOR" || true
		done
	done
	for io in write uring; do
		say "floor $fl ($io): $(awk -v c="$conc" -v re="$fl" -v io="io=$io" '$1 == "regime=" re && $2 == "conc=" c && index($0, " " io " ")' "$FLOOR" |
			grep -o 'writer_us_per_event=[0-9.]*' | cut -d= -f2 | paste -sd' ') us per event"
	done
}

for regime in $REGIMES; do
	step=${R_STEP[$regime]}
	read -ra measured <<<"$(proxies_of "$regime")"
	for conc in ${R_CONC[$regime]}; do
		CELL=$WORK/$regime-c$conc
		mkdir -p "$CELL"
		# shellcheck disable=SC2086 # R_SIMARGS: words
		start_sim "$CELL" "$step" --answer-tokens "${R_ANSWERS[$regime]}" ${R_SIMARGS[$regime]}
		start_nginx "$CELL"
		start_carpool "$CELL"
		declare -A url=([direct]="http://127.0.0.1:$SIM_PORT" [nginx]="http://127.0.0.1:$NG_PORT" [carpool]="http://127.0.0.1:$CP_PORT")
		declare -A ppids=([direct]="" [nginx]="$NG_MASTER $NG_WORKER" [carpool]="$CP_PID")
		if [[ ${R_SINGLE[$regime]} == 1 ]]; then
			# batching off: one prompt per call, and no cap on calls open at once (8 calls of one
			# prompt each would hold the clients in carpool's queue)
			start_carpool "$CELL" "$CP_POLICY" 0 1 carpool-single
			url[carpool-single]="http://127.0.0.1:$CP_PORT"
			ppids[carpool-single]=$CP_PID
		fi
		say "== $regime (sim --step-ms $step --answer-tokens ${R_ANSWERS[$regime]}${R_SIMARGS[$regime]:+ ${R_SIMARGS[$regime]}}), concurrency $conc, $(reqs_per_client "$regime" "$conc") requests per client; warming up"
		# Warm-up (not measured): opens the upstream keep-alive connections, settles the allocators.
		for p in "${measured[@]}"; do
			"$BIN/carpool-loadgen" --url "${url[$p]}" --concurrency "$conc" --requests 1 --prefix warm- --quiet \
				--max-tokens "${R_MAXTOK[$regime]}" --answer-tokens "${R_ANSWERS[$regime]}" \
				--timeout-s "$LOADGEN_TIMEOUT_S" >/dev/null 2>&1 || true
		done
		for rep in $(seq "$REPS"); do
			for p in "${measured[@]}"; do
				# shellcheck disable=SC2086 # ppids: words
				measure "$regime" "$conc" "$rep" "$p" "${url[$p]}" ${ppids[$p]}
			done
		done
		fl=$(floor_regime "$regime")
		grep -q "^regime=$fl conc=$conc " "$FLOOR" || floor_runs "$fl" "$conc"
		printf '%s\t%s\tnginx\t%s\n' "$regime" "$conc" "$(status_kib VmHWM $NG_MASTER $NG_WORKER)" >>"$RSS"
		for p in "${measured[@]}"; do
			[[ $p == carpool* ]] || continue
			printf '%s\t%s\t%s\t%s\n' "$regime" "$conc" "$p" "$(status_kib VmHWM "${ppids[$p]}")" >>"$RSS"
			stop_pid "${ppids[$p]}"
			cp "$CELL/$p.log" "$WORK/$regime-c$conc.$p.log"
		done
		stop_pid "$NG_MASTER"
		stop_pid "$SIM_PID"
		unset url ppids
	done
done

# ------------------------------------------------------------------ memory per held stream
# A slow paced sim (1 s per step, 3..16 tokens per stream) keeps HOLD_STREAMS streams open for at
# least 3 s. RSS is sampled idle (fresh process) and while every client connection is open.
printf 'proxy\tidle_kib\theld_kib\tstreams\tupstream_calls_open\tprompts_upstream\n' >"$MEM"
hold_test() { # slug label kind [policy max_inflight]
	local slug=$1 label=$2 kind=$3 d="$WORK/hold-$1" pids port idle held n=0 i lg inflight prompts
	shift
	mkdir -p "$d"
	CELL=$d
	start_sim "$d" 1000
	if [[ $kind == nginx ]]; then
		start_nginx "$d"
		pids=("$NG_MASTER" "$NG_WORKER")
		port=$NG_PORT
	else
		start_carpool "$d" "$3" "$4"
		pids=("$CP_PID")
		port=$CP_PORT
	fi
	sleep 0.5
	idle=$(status_kib VmRSS "${pids[@]}")
	"$BIN/carpool-loadgen" --url "http://127.0.0.1:$port" --concurrency "$HOLD_STREAMS" --requests 1 \
		--max-tokens "$HOLD_MAX_TOKENS" --prefix hold- --timeout-s 60 --quiet >"$d/loadgen.out" 2>&1 &
	lg=$!
	for i in $(seq 100); do
		n=$(ss -Htn state established "sport = :$port" 2>/dev/null | wc -l)
		((n >= HOLD_STREAMS)) && break
		sleep 0.1
	done
	sleep 1.5 # first tokens flow (1 s per step); every stream lasts >= 3 steps, so all are still open
	n=$(ss -Htn state established "sport = :$port" 2>/dev/null | wc -l)
	held=$(status_kib VmRSS "${pids[@]}")
	read -r inflight prompts < <(sim_stats "$SIM_PORT" inflight prompts 2>/dev/null || true) || true
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$idle" "$held" "$n" "${inflight:--}" "${prompts:--}" >>"$MEM"
	say "memory: $label: idle $idle KiB, $n streams open: $held KiB"
	kill "$lg" 2>/dev/null || true
	wait "$lg" 2>/dev/null || true
	alive "${pids[@]}" || { ANY_FAIL=1; echo "### memory test: $label died" >>"$FAILS"; tail -15 "$d/carpool.log" >>"$FAILS" 2>/dev/null || true; }
	for i in "${pids[@]}"; do stop_pid "$i"; done
	stop_pid "$SIM_PID"
}
say "== memory: $HOLD_STREAMS streams held open (sim --step-ms 1000, max_tokens $HOLD_MAX_TOKENS)"
hold_test nginx "nginx" nginx
hold_test carpool "carpool (bench config: $CP_POLICY, max_inflight $CP_MAX_INFLIGHT)" carpool "$CP_POLICY" "$CP_MAX_INFLIGHT"
hold_test carpool-fixed "carpool (fixed, max_wait_ms 10, max_inflight 16)" carpool fixed 16

# ------------------------------------------------------------------ report
PLOT=$([[ $OUT == bench/RESULTS.md ]] && echo bench/results.png || echo "${OUT%.md}.png")
say "writing $OUT and $PLOT"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
WALL=$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.0f", t1-t0}')
mkdir -p "$WORK/plot"
awk -F'\t' -v out="$WORK/plot" -v cp_inflight="$CP_MAX_INFLIGHT" -f "$ROOT/bench/summarize.awk" "$RAW" "$RSS" "$MEM" >"$WORK/tables.md"
# the plot: CPU and added TTFT against concurrency, of the regimes measured at several (paced, flood)
if [[ " $REGIMES " == *" paced "* || " $REGIMES " == *" flood "* ]]; then
	gnuplot -e "dir='$WORK/plot'; outfile='$PLOT'" "$ROOT/bench/plot.gp" 2>"$WORK/gnuplot.err" ||
		{ echo "gnuplot failed:" >&2; cat "$WORK/gnuplot.err" >&2; }
fi

median() { sort -g | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }
raw_med() { # regime conc proxy column: median over the runs
	awk -F'\t' -v re="$1" -v c="$2" -v p="$3" -v col="$4" '$1 == re && $2 == c && $4 == p && $col != "-" {print $col}' "$RAW" | median
}
floor_med() { # floor conc io: median writer µs per event of the floor runs
	awk -v c="$2" -v re="$1" -v io="io=$3" '$1 == "regime=" re && $2 == "conc=" c && index($0, " " io " ")' "$FLOOR" |
		grep -o 'writer_us_per_event=[0-9.]*' | cut -d= -f2 | median
}
has_regime() { [[ " $REGIMES " == *" $1 "* ]]; }
# target_row TEXT VALUE LIMIT [UNIT]: a row of the targets table; met when VALUE <= LIMIT
target_row() {
	awk -v t="$1" -v v="$2" -v l="$3" -v u="${4:-}" 'BEGIN {
		if (v == "") { printf "| %s | — | ≤ %s%s | not measured |\n", t, l, u; exit }
		printf "| %s | %.2f%s | ≤ %.2f%s | %s |\n", t, v, u, l, u, (v + 0 <= l + 0) ? "met" : "**not met**" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b + 0 > 0) printf "%.3f", a / b }'; }

{
	echo "# carpool benchmark results"
	echo
	if [[ $QUICK == 1 ]]; then
		echo "> **QUICK RUN (QUICK=1): a check of the tooling, not figures.** One run per cell, fewer cells and"
		echo "> requests. Rerun \`make bench\` on a quiet machine for the figures."
		echo
	fi
	echo "Written by \`bench/run-bench.sh\` on $DATE — do not edit by hand; rerun \`make bench\`."
	echo "The upstream is **carpool-sim, a simulator** (bench/sim.c, bench/SIM.md), not a language model:"
	echo "these figures measure the proxies' own cost, not inference."
	echo
	if ((ANY_FAIL)); then
		echo "> **THIS RUN FAILED**: at least one run had errors, token mismatches or a process that died."
		echo "> See [Failures](#failures) below. Figures of failed runs are still included as measured."
		echo
	fi
	echo "## Machine"
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| CPUs (nproc) | $NPROC |"
	echo "| CPU model | $CPU_MODEL |"
	echo "| kernel | $KERNEL |"
	echo "| memory | $MEM_TOTAL |"
	echo "| date | $DATE |"
	echo "| load average at start / end | $LOAD_START / $LOAD_END |"
	echo "| carpool | $("$BIN/carpool" --version 2>&1 | head -1)$([[ -n ${CARPOOL_BIN:-} ]] && echo " ($CARPOOL_BIN)" || echo ", git $GIT_REV$GIT_DIRTY at build time"), binary sha256 $CARPOOL_SHA… |"
	echo "| carpool event-loop threads | $([[ -n $WORKERS_LINE ]] && echo "$CARPOOL_WORKERS (\`$WORKERS_LINE\`)" || echo "1 (this build has no \`workers\` key)") |"
	echo "| nginx | $NGINX_VERSION ($NGINX) |"
	echo "| compiler | $CC_VERSION |"
	echo "| gnuplot | $GNUPLOT_VERSION |"
	echo "| open-file limit | $NOFILE |"
	echo "| clock ticks per second (getconf CLK_TCK) | $CLK_TCK |"
	echo "| wall time of this run | ${WALL} s |"
	echo
	echo "## Command"
	echo
	echo '```sh'
	echo "make bench      # = bash bench/run-bench.sh"
	echo "# with: REPS=$REPS REGIMES=\"$REGIMES\" CONCURRENCIES=\"$CONCURRENCIES\" LONG_PACED_CONCURRENCIES=\"$LONG_PACED_CONCURRENCIES\""
	echo "#       LONG_FLOOD_CONCURRENCIES=\"$LONG_FLOOD_CONCURRENCIES\" HOLD_STREAMS=$HOLD_STREAMS$([[ $QUICK == 1 ]] && echo " QUICK=1")"
	echo '```'
	echo
	echo "Per cell (regime × concurrency C) and per run, the same load is sent one way after the other: straight at"
	echo "the simulator (**direct**), through **nginx**, through **carpool**, and in the 64-token regimes through"
	echo "**carpool-single**, carpool with batching off (\`max_batch_size: 1\`, \`max_inflight: 0\`), to weigh a batched"
	echo "call against single ones. One regime's simulator and load generator:"
	echo
	echo "| regime | simulator | load generator | C: R requests per client (C×R per run) |"
	echo "|---|---|---|---|"
	for regime in $REGIMES; do
		printf '| %s | `carpool-sim --step-ms %s --answer-tokens %s%s` | `carpool-loadgen --concurrency C --requests R --max-tokens %s --answer-tokens %s` |' \
			"$regime" "${R_STEP[$regime]}" "${R_ANSWERS[$regime]}" "${R_SIMARGS[$regime]:+ ${R_SIMARGS[$regime]}}" \
			"${R_MAXTOK[$regime]}" "${R_ANSWERS[$regime]}"
		for c in ${R_CONC[$regime]}; do printf ' %s: %s (%s);' "$c" "$(reqs_per_client "$regime" "$c")" "$((c * $(reqs_per_client "$regime" "$c")))"; done
		echo ' |'
	done
	echo
	echo "Streaming \`/v1/completions\`, one prompt per request (\`client-<c>-req-<r>\`), \`--timeout-s $LOADGEN_TIMEOUT_S\`. Every token of"
	echo "every response is verified by the load generator. paced: one decode step every $PACED_STEP_MS ms; flood: no delay,"
	echo "one token of every sequence per step (interleaved); **burst**: each sequence's whole answer written at once"
	echo "(bench/SIM.md, \`--burst\`), so a client's answer comes in one upstream read."
	echo
	echo "carpool config (bench):"
	echo
	echo '```yaml'
	SIM_PORT=SIM_PORT write_cp_config "$WORK/carpool-shown.yaml" "$CP_POLICY" "$CP_MAX_INFLIGHT"
	cat "$WORK/carpool-shown.yaml"
	echo '```'
	echo
	echo "carpool-single: the same with \`max_inflight: 0\` and \`max_batch_size: 1\`."
	echo
	echo "nginx config (bench/nginx.conf.in, filled in; \`nginx -p TMPDIR -c TMPDIR/nginx.conf\`):"
	echo
	echo '```nginx'
	sed -e "s#@PREFIX@#TMPDIR#g" -e "s#@PORT@#PORT#g" -e "s#@SIM_PORT@#SIM_PORT#g" -e "s#@NOFILE@#$NOFILE#g" \
		-e "s#@WORKER_CONNECTIONS@#$((NOFILE > 16384 ? 16384 : NOFILE - 64))#g" \
		-e "s#@USER_LINE@#$([[ $(id -u) == 0 ]] && echo 'user root;')#g" bench/nginx.conf.in | grep -v '^#'
	echo '```'
	echo
	cat "$WORK/tables.md"
	echo
	echo "![CPU per token and added TTFT vs concurrency]($(basename "$PLOT"))"
	echo
	echo "## The floor: one write per token, and one submit per step"
	echo
	echo "A proxy must deliver every token event to every client. \`bin/carpool-writefloor\` measures what that alone"
	echo "costs the writing process here: a ~200-byte chunked SSE event to each of C loopback connections drained by"
	echo "another process with epoll, per step (paced: a step every 20 ms; flood: back to back), CPU from getrusage."
	echo "**write()**: one \`write()\` per connection per step (the old floor). **io_uring**: the same sends queued"
	echo "together and submitted with one \`io_uring_enter\` per step (\`--io uring\`, MSG_DONTWAIT; the new floor). On"
	echo "loopback the sender also runs the receiver's TCP input and wakes it, so this is nearly all kernel time;"
	echo "io_uring saves the system call per event, not the delivery. Measured in the same run, $REPS × ${FLOOR_S} s per"
	echo "floor and way, medians; a 64-token regime is held against the floor of its pacing at the same C (the floor"
	echo "does not depend on answer lengths), one event per write; **in one read** (flood-64-burst), against a whole"
	echo "64-event answer per write (\`--events-per-write 64\`), as carpool may send a client the answer it got in"
	echo "one read: there the system call is shared by 64 tokens and the two ways cost nearly the same."
	echo
	echo "| regime | C | floor | write() floor µs/event | io_uring floor µs/event | nginx µs/token | carpool µs/token | nginx ÷ write() floor | carpool ÷ write() floor | carpool ÷ io_uring floor |"
	echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
	for regime in $REGIMES; do
		fr=$(floor_regime "$regime")
		for c in ${R_CONC[$regime]}; do
			fw=$(floor_med "$fr" "$c" write)
			fu=$(floor_med "$fr" "$c" uring)
			ng=$(raw_med "$regime" "$c" nginx 18)
			cp=$(raw_med "$regime" "$c" carpool 18)
			awk -v re="$regime" -v c="$c" -v fl="$fr, ${FLOOR_EPW[$fr]} per write" -v fw="${fw:-0}" -v fu="${fu:-0}" -v ng="${ng:-0}" -v cp="${cp:-0}" '
				function r(a, b) { return b > 0 ? sprintf("%.2f", a / b) : "—" }
				BEGIN { printf "| %s | %s | %s | %.3f | %.3f | %.2f | %.2f | %s | %s | %s |\n", re, c, fl, fw, fu, ng, cp, r(ng, fw), r(cp, fw), r(cp, fu) }'
		done
	done
	echo
	echo "## Issue 12's targets in this run"
	echo
	echo "Medians of this run. The CPU targets are met or not here; the profile targets (user instructions"
	echo "per token under callgrind ≤ 1,500; system calls per token in flood ≤ 0.2) are measured by"
	echo "\`bash bench/profile.sh\` ([RESULTS-profile.md](RESULTS-profile.md))."
	echo
	echo "| target | measured | limit | |"
	echo "|---|---:|---:|---|"
	for regime in paced paced-64; do
		has_regime "$regime" || continue
		for c in 256 1024; do
			[[ " ${R_CONC[$regime]} " == *" $c "* ]] || continue
			cp=$(raw_med "$regime" "$c" carpool 18)
			target_row "$regime, $c streams: carpool ÷ nginx, CPU per token" "$(ratio "$cp" "$(raw_med "$regime" "$c" nginx 18)")" 0.33 x
			target_row "$regime, $c streams: carpool ÷ io_uring floor" "$(ratio "$cp" "$(floor_med paced "$c" uring)")" 1.3 x
		done
	done
	if has_regime flood-64-burst && [[ " ${R_CONC[flood-64-burst]} " == *" 256 "* ]]; then
		cp=$(raw_med flood-64-burst 256 carpool 18)
		target_row "flood, 64-token answers in one read, 256 streams: carpool CPU per token" "$cp" 0.45 " µs"
		target_row "the same: carpool ÷ nginx" "$(ratio "$cp" "$(raw_med flood-64-burst 256 nginx 18)")" 1 x
	fi
	for regime in $REGIMES; do
		[[ ${R_SINGLE[$regime]} == 1 ]] || continue
		for c in ${R_CONC[$regime]}; do
			target_row "$regime, $c streams: batched ÷ single (max_batch_size 64 vs 1), carpool CPU per token" \
				"$(ratio "$(raw_med "$regime" "$c" carpool 18)" "$(raw_med "$regime" "$c" carpool-single 18)")" 1 x
		done
	done
	echo
	echo "\"x\" is a ratio. The dispatch issue's latency targets are bench/latency.sh's ([RESULTS-latency.md](RESULTS-latency.md));"
	echo "memory per held stream is above."
	echo
	echo "## Notes on method"
	echo
	echo "- **CPU per token** = CPU time of the proxy process (user + kernel: the scheduler's run time of all its threads,"
	echo "  \`/proc/PID/task/*/schedstat\`, in ns; for nginx master + worker), read right before and right after the load"
	echo "  generator runs, ÷ tokens streamed to clients. (Earlier runs used utime + stime from \`/proc/PID/stat\`, which"
	echo "  tick at 1/$CLK_TCK s: ±2 ticks per run; the same CPU time, counted less finely.) \"sim CPU\" is the same for"
	echo "  the simulator process: what the upstream spent."
	echo "- **Added TTFT** = a proxy run's time-to-first-token percentile minus the median of the direct runs of the same"
	echo "  cell. Direct rows show the absolute TTFT instead."
	echo "- Each cell is its own set of processes: a fresh simulator, nginx and carpool (and carpool-single), one"
	echo "  unmeasured warm-up pass (C requests) per target, then $REPS rounds of direct → nginx → carpool (→ carpool-single),"
	echo "  interleaved so that slow drifts of the machine hit all alike. Table figures are **median (min–max)** over the"
	echo "  $REPS runs."
	echo "- Closed loop: each of the C clients has one keep-alive connection and sends its R requests back to back."
	echo "  Throughput (tokens/s) therefore reflects latency: a proxy that queues requests lowers it."
	echo "- Everything (simulator, proxy, load generator) shares the $NPROC CPUs of one machine over loopback; the load"
	echo "  generator is itself a busy process, and in the flood regime the three compete for the CPUs. Other"
	echo "  processes on the machine (see the load average above) add noise."
	echo "- **Prompts per upstream call** come from the simulator's \`GET /stats\` (prompts / completion_calls), reset with"
	echo "  \`POST /stats/reset\` before each run. direct and nginx always make one upstream call per request."
	echo "- carpool's adaptive policy sends at once while fewer than max_inflight ($CP_MAX_INFLIGHT) calls are open, and"
	echo "  packs waiting prompts (up to $CP_MAX_BATCH per call) into the next call when a slot frees. A call holds its"
	echo "  slot until its longest sequence ends, so at most $CP_MAX_INFLIGHT × $CP_MAX_BATCH = $((CP_MAX_INFLIGHT * CP_MAX_BATCH)) prompts"
	echo "  decode at once through carpool; above that, requests queue in carpool (visible as added TTFT and lower"
	echo "  tokens/s at C=1024). That is the configured upstream budget at work, not a proxy cost. carpool-single has"
	echo "  no such cap (\`max_inflight: 0\`): with one prompt per call, a cap of $CP_MAX_INFLIGHT calls would hold most clients"
	echo "  in its queue, and the comparison is of CPU per token, not of queueing."
	echo "- The simulator speaks the vLLM dialect (its default); carpool detects it and, as it does with vLLM, asks"
	echo "  for \`continuous_usage_stats\` on every call (to give each client its exact usage), so every upstream chunk"
	echo "  it parses carries a usage object. nginx only relays bytes."
	echo "- **Peak RSS** = VmHWM from \`/proc/PID/status\` at the end of the cell (for nginx master + worker)."
	echo "- **Memory per held stream**: a fresh simulator with \`--step-ms 1000\` (streams last 3–16 s), a fresh proxy,"
	echo "  VmRSS sampled idle and then 1.5 s after all $HOLD_STREAMS client connections are established"
	echo "  (\`ss state established sport = :PORT\`); KiB per stream = (held − idle) / streams."
	echo "- carpool runs as one process; where the build has the \`workers\` key it is pinned to $CARPOOL_WORKERS event-loop"
	echo "  thread(s) (CARPOOL_WORKERS), to match nginx's \`worker_processes 1\`. utime + stime cover all its threads."
	echo "- The binaries are copied once after \`make all\`, so the whole run measures one build (sha256 above)."
	echo "- The load generator refuses non-loopback targets; every listener here is 127.0.0.1."
	echo
	if [[ -s $FAILS ]]; then
		echo "## Failures"
		echo
		cat "$FAILS"
	fi
	echo "## Raw runs"
	echo
	echo "<details><summary>every measured run (tab-separated)</summary>"
	echo
	echo '```'
	cat "$RAW"
	echo
	cat "$RSS"
	echo
	cat "$MEM"
	echo
	cat "$FLOOR"
	echo '```'
	echo
	echo "</details>"
} >"$OUT"

say "done in ${WALL} s: $OUT, $PLOT"
if ((ANY_FAIL)); then
	say "FAILED: errors, mismatches or a dead process — see the Failures section of $OUT"
	exit 1
fi
