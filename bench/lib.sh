# Shared by the bench scripts (sourced): start the simulator and carpool on free loopback ports.
# Both wait until the process says it is ready and set *_pid and *_port.

# plain_build: make all, and make sure bin/ is not the sanitizer build `make SAN=1 test` leaves
# behind (ASan would double the CPU and hold hundreds of MiB in its quarantine).
plain_build() {
	make -s -j2 all
	if grep -q __asan_init bin/carpool 2>/dev/null; then
		echo "bin/ holds a sanitizer build (make SAN=1); rebuilding without" >&2
		make -s clean
		make -s -j2 all
	fi
}

# bench_start: a plain build, every file descriptor allowed, and $work, a temporary directory removed
# at exit together with the processes listed in pids.
bench_start() {
	plain_build
	ulimit -n "$(ulimit -Hn)"
	work=$(mktemp -d)
	pids=()
	trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
}

# wait_line FILE PATTERN [SECONDS]: until PATTERN appears in FILE (SECONDS at most, default 5)
wait_line() { for _ in $(seq $((${3:-5} * 10))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
port_in() { grep -o 'listening on 127.0.0.1:[0-9]*' "$1" | head -1 | grep -o '[0-9]*$'; }

# start_sim LOG ARGS...: bin/carpool-sim on 127.0.0.1:0; sets sim_pid, sim_port
start_sim() {
	local log=$1
	shift
	bin/carpool-sim --listen 127.0.0.1:0 "$@" >"$log" 2>&1 &
	sim_pid=$!
	wait_line "$log" listening
	sim_port=$(port_in "$log")
}

# start_carpool CONFIG LOG: bin/carpool (or $CARPOOL_BIN) -c CONFIG; sets cp_pid, cp_port.
# CARPOOL_WRAP: a command line to run it under (valgrind ...: the same pid), CARPOOL_WAIT_S: how long
# it may take to be ready (5 s).
start_carpool() {
	# shellcheck disable=SC2086 # CARPOOL_WRAP: words
	${CARPOOL_WRAP:-} "${CARPOOL_BIN:-bin/carpool}" -c "$1" 2>"$2" &
	cp_pid=$!
	wait_line "$2" ready "${CARPOOL_WAIT_S:-5}"
	cp_port=$(port_in "$2")
}

# bench_config FILE SIM_PORT [POLICY] [MAX_INFLIGHT] [MAX_BATCH] [WORKERS]: the benchmarks' carpool
# config: one upstream (dialect auto) and the dispatch settings given (adaptive, 8, 64 unless said),
# room for 10,000 clients, one worker (WORKERS "" leaves the key out, for builds without it).
bench_config() {
	{ [[ -z ${6-1} ]] || echo "workers: ${6-1}"; cat <<YAML
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$2
    dialect: auto
    max_inflight: ${4:-8}
batching:
  policy: ${3:-adaptive}
  max_batch_size: ${5:-64}
limits:
  max_clients: 10000
  max_queue: 10000
log:
  level: info
YAML
	} >"$1"
}

# default_config FILE SIM_PORT: carpool's defaults, only where to listen and the upstream.
default_config() {
	cat >"$1" <<YAML
listen:
  - address: 127.0.0.1:0
upstreams:
  - url: http://127.0.0.1:$2
YAML
}

# field LINE NAME: the value of NAME=value in a loadgen RESULT line.
field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }

# cpu_ns PID...: the CPU time (user + kernel) the processes' live threads have run, in ns: the
# scheduler's own count (/proc/PID/task/*/schedstat), where utime and stime tick at 1/CLK_TCK s. A
# kernel without schedstat: utime + stime instead. A pid that is gone counts 0.
cpu_ns() {
	local p
	if [[ -r /proc/self/schedstat ]]; then
		for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done | awk '{s += $1} END {printf "%.0f\n", s}'
	else
		for p in "$@"; do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
			awk -v hz="$(getconf CLK_TCK)" '{s += $12 + $13} END {printf "%.0f\n", s * 1e9 / hz}'
	fi
}

# sim_stats PORT KEY...: those top-level figures of the sim's /stats on one line, parsed as JSON (the
# request log in /stats reuses names such as "prompts", so a pattern match can find the wrong one)
sim_stats() {
	local port=$1
	shift
	curl -s "http://127.0.0.1:$port/stats" | node -e '
		const s = JSON.parse(require("fs").readFileSync(0, "utf8"));
		console.log(process.argv.slice(1).map((k) => s[k] ?? "-").join(" "));' "$@"
}
