#!/usr/bin/env bash
# carpool benchmark: the same streaming load (i) straight at the simulator, (ii) through nginx as a
# plain streaming reverse proxy and (iii) through carpool, at several concurrencies, in a paced and a
# flood regime. Measures CPU per streamed token of the proxy process, time-to-first-token added over
# direct, tokens/s, errors and token mismatches, carpool's prompts per upstream call, RSS, and the
# memory cost of a held stream. Writes bench/RESULTS.md and bench/results.png.
#
# THE UPSTREAM IS A SIMULATOR (bench/sim.c), not a model: these numbers measure the proxies, not
# inference. Loopback only.
#
# Knobs (environment): REPS (runs per cell, default 5, at least 3), CONCURRENCIES ("64 256 1024"),
# HOLD_STREAMS (streams held open for the memory figure, 1000), CARPOOL_WORKERS (carpool event-loop
# threads when the binary has the `workers` key; default 1, like nginx's worker_processes 1),
# KEEP_WORK=1 (keep the temp dir).
# Exit status: 0 when every request of every run completed and matched; 1 otherwise (RESULTS.md is
# written either way and says what failed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REPS=${REPS:-5}
CONCURRENCIES=${CONCURRENCIES:-"64 256 1024"}
HOLD_STREAMS=${HOLD_STREAMS:-1000}
PACED_STEP_MS=20
MAX_TOKENS=16 # the sim draws each sequence's length from 3..16 tokens (mean 9.5)
FLOOD_TOTAL=30720 # requests per flood run, split over the clients
CP_MAX_INFLIGHT=8
CP_MAX_BATCH=64
CP_POLICY=adaptive
LOADGEN_TIMEOUT_S=30
CARPOOL_WORKERS=${CARPOOL_WORKERS:-1}
((REPS >= 3)) || { echo "REPS must be at least 3 (medians of >= 3 runs)" >&2; exit 2; }

T0=$(date +%s.%N)
el() { awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%6.1fs", t1-t0}'; }
say() { echo "[$(el)] $*"; }

# Requests per client for a run: paced runs last a few seconds each (a request takes ~0.2 s at
# 20 ms/step), with enough tokens at low concurrency for the 10 ms CPU tick to resolve; flood runs
# send FLOOD_TOTAL requests in all.
reqs_per_client() { # regime conc
	if [[ $1 == paced ]]; then
		if (($2 <= 64)); then echo 30; elif (($2 <= 256)); then echo 16; else echo 8; fi
	else
		local r=$((FLOOD_TOTAL / $2))
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
make -s all
if grep -q __asan_init bin/carpool 2>/dev/null; then
	say "bin/ holds a sanitizer build (make SAN=1): rebuilding without"
	make -s clean
	make -s -j2 all
fi

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
cp bin/carpool bin/carpool-sim bin/carpool-loadgen bin/carpool-writefloor "$WORK/bin/"
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
ticks() { # total utime+stime (clock ticks) of the given pids; a pid that is gone counts 0
	local s=0 p v
	for p in "$@"; do
		v=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}') || v=0
		s=$((s + ${v:-0}))
	done
	echo "$s"
}
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
start_sim() { # dir step_ms
	local d=$1 i
	rm -f "$d/sim.port"
	"$BIN/carpool-sim" --listen 127.0.0.1:0 --step-ms "$2" --port-file "$d/sim.port" >"$d/sim.log" 2>&1 &
	SIM_PID=$!
	PIDS+=("$SIM_PID")
	for i in $(seq 100); do [[ -s $d/sim.port ]] && break; sleep 0.05; done
	SIM_PORT=$(cat "$d/sim.port")
}
sim_stat() { # json field
	echo "$1" | sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p"
}

CP_PID="" CP_PORT=""
write_cp_config() { # file policy max_inflight
	{ [[ -z $WORKERS_LINE ]] || echo "$WORKERS_LINE"; cat <<YAML
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$SIM_PORT
    dialect: auto
    max_inflight: $3
batching:
  policy: $2
  max_batch_size: $CP_MAX_BATCH
limits:
  max_clients: 10000
  max_queue: 10000
log:
  level: info
YAML
	} >"$1"
}
start_carpool() { # dir [policy] [max_inflight]
	local d=$1 i
	write_cp_config "$d/carpool.yaml" "${2:-$CP_POLICY}" "${3:-$CP_MAX_INFLIGHT}"
	"$BIN/carpool" -c "$d/carpool.yaml" 2>"$d/carpool.log" &
	CP_PID=$!
	PIDS+=("$CP_PID")
	for i in $(seq 100); do grep -q ' ready ' "$d/carpool.log" 2>/dev/null && break; sleep 0.05; done
	CP_PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$d/carpool.log" | head -1 | grep -o '[0-9]*$')
	[[ -n $CP_PORT ]] || { echo "carpool did not start:" >&2; cat "$d/carpool.log" >&2; exit 1; }
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

ncells=0
for _ in $CONCURRENCIES; do ncells=$((ncells + 1)); done
TOTAL_RUNS=$((2 * ncells * REPS * 3))
say "carpool benchmark: ${NPROC} CPUs ($CPU_MODEL), concurrencies: $CONCURRENCIES, $REPS runs per cell, $TOTAL_RUNS measured runs + memory test"
say "work directory: $WORK"

# ------------------------------------------------------------------ one measured run
RUN_NO=0
ANY_FAIL=0
measure() { # regime conc rep proxy url pids...
	local regime=$1 conc=$2 rep=$3 proxy=$4 url=$5
	shift 5
	local pids=("$@") r out lg_rc=0 c0 c1 s0 s1 st
	r=$(reqs_per_client "$regime" "$conc")
	RUN_NO=$((RUN_NO + 1))
	curl -s -m 5 -X POST "http://127.0.0.1:$SIM_PORT/stats/reset" >/dev/null
	local log="$WORK/$regime-c$conc-r$rep-$proxy.loadgen"
	c0=$(ticks "${pids[@]}")
	s0=$(ticks "$SIM_PID")
	"$BIN/carpool-loadgen" --url "$url" --concurrency "$conc" --requests "$r" --max-tokens "$MAX_TOKENS" \
		--timeout-s "$LOADGEN_TIMEOUT_S" --quiet >"$log.out" 2>"$log.err" || lg_rc=$?
	c1=$(ticks "${pids[@]}")
	s1=$(ticks "$SIM_PID")
	st=$(curl -s -m 5 "http://127.0.0.1:$SIM_PORT/stats" || true)
	out=$(grep '^RESULT ' "$log.out" | tail -1 || true)
	[[ -n $out ]] || out="RESULT requests=$((conc * r)) ok=0 errors=$((conc * r)) mismatches=0 tokens=0 elapsed_s=0 tokens_per_s=0 ttft_p50_ms=0 ttft_p99_ms=0 gap_p99_ms=0 latency_p50_ms=0 latency_p99_ms=0"
	local line
	line=$(echo "$out" | awk -v regime="$regime" -v conc="$conc" -v rep="$rep" -v proxy="$proxy" -v r="$r" \
		-v dc=$((c1 - c0)) -v ds=$((s1 - s0)) -v hz="$CLK_TCK" -v calls="$(sim_stat "$st" completion_calls)" \
		-v prompts="$(sim_stat "$st" prompts)" -v maxp="$(sim_stat "$st" max_prompts_per_call)" -v rc="$lg_rc" '
		{ for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
		END {
			tok = v["tokens"] + 0
			pu = (proxy == "direct" || tok == 0) ? "-" : sprintf("%.3f", dc * 1e6 / hz / tok)
			su = tok == 0 ? "-" : sprintf("%.3f", ds * 1e6 / hz / tok)
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
	say "[$RUN_NO/$TOTAL_RUNS] $regime C=$conc run $rep $(printf '%-7s' "$proxy") $(echo "$line" | awk -F'\t' '{printf "%6.2fs  %8.0f tok/s  ttft_p50 %7.1f ms  proxy %s us/tok  calls %s  err %s mis %s", $11, $12, $13, $18, $20, $8, $9}')${dead:+  DIED:$dead}"
	if [[ $lg_rc != 0 || $errs != 0 || $mism != 0 || -n $dead ]]; then
		ANY_FAIL=1
		{
			echo "### $regime, concurrency $conc, run $rep, via $proxy"
			echo
			echo "- loadgen: \`bin/carpool-loadgen --url $url --concurrency $conc --requests $r --max-tokens $MAX_TOKENS --timeout-s $LOADGEN_TIMEOUT_S --quiet\` → exit $lg_rc, errors $errs, mismatches $mism${dead:+; process(es) gone afterwards:$dead}"
			echo "- simulator: \`bin/carpool-sim --step-ms $([[ $regime == paced ]] && echo $PACED_STEP_MS || echo 0)\`"
			echo
			echo '```'
			echo "# loadgen stderr (head)"
			head -8 "$log.err"
			if [[ $proxy == carpool ]]; then
				echo "# carpool log (tail)"
				tail -15 "$CELL/carpool.log"
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
for regime in paced flood; do
	step=$([[ $regime == paced ]] && echo $PACED_STEP_MS || echo 0)
	for conc in $CONCURRENCIES; do
		CELL=$WORK/$regime-c$conc
		mkdir -p "$CELL"
		start_sim "$CELL" "$step"
		start_nginx "$CELL"
		start_carpool "$CELL"
		say "== $regime (sim --step-ms $step), concurrency $conc, $(reqs_per_client "$regime" "$conc") requests per client; warming up"
		# Warm-up (not measured): opens the upstream keep-alive connections, settles the allocators.
		for u in "http://127.0.0.1:$SIM_PORT" "http://127.0.0.1:$NG_PORT" "http://127.0.0.1:$CP_PORT"; do
			"$BIN/carpool-loadgen" --url "$u" --concurrency "$conc" --requests 1 --prefix warm- --quiet \
				--timeout-s "$LOADGEN_TIMEOUT_S" >/dev/null 2>&1 || true
		done
		for rep in $(seq "$REPS"); do
			measure "$regime" "$conc" "$rep" direct "http://127.0.0.1:$SIM_PORT"
			measure "$regime" "$conc" "$rep" nginx "http://127.0.0.1:$NG_PORT" "$NG_MASTER" "$NG_WORKER"
			measure "$regime" "$conc" "$rep" carpool "http://127.0.0.1:$CP_PORT" "$CP_PID"
		done
		# The floor of this cell: the CPU one write() of one token event to each of C loopback
		# clients costs the writer, with nothing else (bench/writefloor.c); a proxy makes at least that.
		for rep in $(seq "$REPS"); do
			"$BIN/carpool-writefloor" --conns "$conc" --step-ms "$step" --duration-s 3 2>/dev/null |
				sed -n "s/^RESULT /regime=$regime conc=$conc /p" >>"$FLOOR" || true
		done
		say "write floor: $(awk -v c="$conc" -v re="$regime" '$1 == "regime=" re && $2 == "conc=" c' "$FLOOR" |
			grep -o 'writer_us_per_write=[0-9.]*' | cut -d= -f2 | paste -sd' ') us per write"
		printf '%s\t%s\tnginx\t%s\n' "$regime" "$conc" "$(status_kib VmHWM "$NG_MASTER" "$NG_WORKER")" >>"$RSS"
		printf '%s\t%s\tcarpool\t%s\n' "$regime" "$conc" "$(status_kib VmHWM "$CP_PID")" >>"$RSS"
		stop_pid "$CP_PID"
		stop_pid "$NG_MASTER"
		stop_pid "$SIM_PID"
		cp "$CELL/carpool.log" "$WORK/$regime-c$conc.carpool.log"
	done
done

# ------------------------------------------------------------------ memory per held stream
# A slow paced sim (1 s per step, 3..16 tokens per stream) keeps HOLD_STREAMS streams open for at
# least 3 s. RSS is sampled idle (fresh process) and while every client connection is open.
printf 'proxy\tidle_kib\theld_kib\tstreams\tupstream_calls_open\tprompts_upstream\n' >"$MEM"
hold_test() { # slug label kind [policy max_inflight]
	local slug=$1 label=$2 kind=$3 d="$WORK/hold-$1" pids port idle held n=0 i lg st
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
		--max-tokens "$MAX_TOKENS" --prefix hold- --timeout-s 60 --quiet >"$d/loadgen.out" 2>&1 &
	lg=$!
	for i in $(seq 100); do
		n=$(ss -Htn state established "sport = :$port" 2>/dev/null | wc -l)
		((n >= HOLD_STREAMS)) && break
		sleep 0.1
	done
	sleep 1.5 # first tokens flow (1 s per step); every stream lasts >= 3 steps, so all are still open
	n=$(ss -Htn state established "sport = :$port" 2>/dev/null | wc -l)
	held=$(status_kib VmRSS "${pids[@]}")
	st=$(curl -s -m 5 "http://127.0.0.1:$SIM_PORT/stats" || true)
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$idle" "$held" "$n" "$(sim_stat "$st" inflight)" "$(sim_stat "$st" prompts)" >>"$MEM"
	say "memory: $label: idle $idle KiB, $n streams open: $held KiB"
	kill "$lg" 2>/dev/null || true
	wait "$lg" 2>/dev/null || true
	alive "${pids[@]}" || { ANY_FAIL=1; echo "### memory test: $label died" >>"$FAILS"; tail -15 "$d/carpool.log" >>"$FAILS" 2>/dev/null || true; }
	for i in "${pids[@]}"; do stop_pid "$i"; done
	stop_pid "$SIM_PID"
}
say "== memory: $HOLD_STREAMS streams held open (sim --step-ms 1000, max_tokens $MAX_TOKENS)"
hold_test nginx "nginx" nginx
hold_test carpool "carpool (bench config: $CP_POLICY, max_inflight $CP_MAX_INFLIGHT)" carpool "$CP_POLICY" "$CP_MAX_INFLIGHT"
hold_test carpool-fixed "carpool (fixed, max_wait_ms 10, max_inflight 16)" carpool fixed 16

# ------------------------------------------------------------------ report
say "writing bench/RESULTS.md and bench/results.png"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
WALL=$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN{printf "%.0f", t1-t0}')
mkdir -p "$WORK/plot"
awk -F'\t' -v out="$WORK/plot" -v cp_inflight="$CP_MAX_INFLIGHT" -f "$ROOT/bench/summarize.awk" "$RAW" "$RSS" "$MEM" >"$WORK/tables.md"
gnuplot -e "dir='$WORK/plot'; outfile='$ROOT/bench/results.png'" "$ROOT/bench/plot.gp" 2>"$WORK/gnuplot.err" ||
	{ echo "gnuplot failed:" >&2; cat "$WORK/gnuplot.err" >&2; }

{
	echo "# carpool benchmark results"
	echo
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
	echo "| carpool | $("$BIN/carpool" --version 2>&1 | head -1), git $GIT_REV$GIT_DIRTY at build time, binary sha256 $CARPOOL_SHA… |"
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
	echo "# with: REPS=$REPS CONCURRENCIES=\"$CONCURRENCIES\" HOLD_STREAMS=$HOLD_STREAMS"
	echo '```'
	echo
	echo "Per cell (regime × concurrency C) and per run, the same load is sent three ways, one after the other:"
	echo "straight at the simulator (**direct**), through **nginx**, and through **carpool**:"
	echo
	echo '```sh'
	echo "bin/carpool-sim --listen 127.0.0.1:0 --step-ms 20     # paced: one decode step every 20 ms"
	echo "bin/carpool-sim --listen 127.0.0.1:0 --step-ms 0      # flood: no delay at all"
	echo "bin/carpool-loadgen --url http://127.0.0.1:PORT --concurrency C --requests R --max-tokens $MAX_TOKENS --timeout-s $LOADGEN_TIMEOUT_S --quiet"
	echo '```'
	echo
	printf '| regime: R requests per client, C×R requests per run |'
	for c in $CONCURRENCIES; do printf ' C=%s |' "$c"; done
	printf '\n|---|'
	for c in $CONCURRENCIES; do printf -- '---|'; done
	echo
	for regime in paced flood; do
		printf '| %s |' "$regime"
		for c in $CONCURRENCIES; do printf ' R=%s, %s |' "$(reqs_per_client $regime $c)" "$((c * $(reqs_per_client $regime $c)))"; done
		echo
	done
	echo
	echo "Streaming \`/v1/completions\`, one prompt per request (\`client-<c>-req-<r>\`), max_tokens $MAX_TOKENS; the"
	echo "simulator gives each sequence 3..16 tokens. Every token of every response is verified by the load generator."
	echo
	echo "carpool config (bench):"
	echo
	echo '```yaml'
	SIM_PORT=SIM_PORT write_cp_config "$WORK/carpool-shown.yaml" "$CP_POLICY" "$CP_MAX_INFLIGHT"
	cat "$WORK/carpool-shown.yaml"
	echo '```'
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
	echo "![CPU per token and added TTFT vs concurrency](results.png)"
	echo
	echo "## The floor: one write per token"
	echo
	echo "A proxy must make at least one \`write()\` per token per client (TCP_NODELAY, an event as soon as it"
	echo "exists). \`bin/carpool-writefloor\` measures what that alone costs the writing process here: a ~200-byte"
	echo "chunked SSE event to each of C loopback connections drained by another process with epoll, one write"
	echo "per connection per step (paced: a step every 20 ms; flood: back to back), CPU from getrusage. On"
	echo "loopback the writer's \`write()\` also runs the receiver's TCP input and wakes it, so this is nearly all"
	echo "kernel time. Measured in the same run, $REPS × 3 s per cell, medians:"
	echo
	echo "| regime | C | write floor µs/write | nginx µs/token | carpool µs/token | nginx ÷ floor | carpool ÷ floor |"
	echo "|---|---:|---:|---:|---:|---:|---:|"
	for regime in paced flood; do
		for c in $CONCURRENCIES; do
			fl=$(awk -v c="$c" -v re="$regime" '$1 == "regime=" re && $2 == "conc=" c' "$FLOOR" |
				grep -o 'writer_us_per_write=[0-9.]*' | cut -d= -f2 | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}')
			ng=$(awk -F'\t' -v c="$c" -v re="$regime" '$1 == re && $2 == c && $4 == "nginx" {print $18}' "$RAW" | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}')
			cp=$(awk -F'\t' -v c="$c" -v re="$regime" '$1 == re && $2 == c && $4 == "carpool" {print $18}' "$RAW" | sort -g | awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]}')
			awk -v re="$regime" -v c="$c" -v fl="${fl:-0}" -v ng="${ng:-0}" -v cp="${cp:-0}" 'BEGIN {
				rn = "-"; rc = "-"
				if (fl > 0) { rn = sprintf("%.2f", ng / fl); rc = sprintf("%.2f", cp / fl) }
				printf "| %s | %s | %.2f | %.2f | %.2f | %s | %s |\n", re, c, fl, ng, cp, rn, rc }'
		done
	done
	echo
	echo "The paced target (carpool ≤ 1/3 of nginx) would put carpool below the cost of the one write each token"
	echo "needs on this machine; what carpool spends above the floor is its own work (reading and parsing the"
	echo "upstream stream once per batch, per-request parsing and bookkeeping)."
	echo
	echo "## Notes on method"
	echo
	echo "- **CPU per token** = (utime + stime of the proxy process, from \`/proc/PID/stat\`, read right before and right"
	echo "  after the load generator runs; for nginx master + worker) × 10⁶ / CLK_TCK / tokens streamed to clients."
	echo "  The counters tick at 1/$CLK_TCK s, so a run's figure is uncertain by about ±2 ticks; runs are sized so that"
	echo "  a proxy spends well over 20 ticks. \"sim CPU\" is the same for the simulator process: what the upstream spent."
	echo "- **Added TTFT** = a proxy run's time-to-first-token percentile minus the median of the direct runs of the same"
	echo "  cell. Direct rows show the absolute TTFT instead."
	echo "- Each cell is its own set of processes: a fresh simulator, nginx and carpool, one unmeasured warm-up pass"
	echo "  (C requests) per target, then $REPS rounds of direct → nginx → carpool, interleaved so that slow drifts of the"
	echo "  machine hit all three alike. Table figures are **median (min–max)** over the $REPS runs."
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
	echo "  tokens/s at C=1024). That is the configured upstream budget at work, not a proxy cost."
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
} >"$ROOT/bench/RESULTS.md"

say "done in ${WALL} s: bench/RESULTS.md, bench/results.png"
if ((ANY_FAIL)); then
	say "FAILED: errors, mismatches or a dead process — see the Failures section of bench/RESULTS.md"
	exit 1
fi
