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

# wait_line FILE PATTERN: until PATTERN appears in FILE (5 s at most)
wait_line() { for _ in $(seq 50); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; return 1; }
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

# start_carpool CONFIG LOG: bin/carpool (or $CARPOOL_BIN) -c CONFIG; sets cp_pid, cp_port
start_carpool() {
	"${CARPOOL_BIN:-bin/carpool}" -c "$1" 2>"$2" &
	cp_pid=$!
	wait_line "$2" ready
	cp_port=$(port_in "$2")
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
