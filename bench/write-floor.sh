#!/usr/bin/env bash
# The write floor: what one write() of one SSE token event to each of N loopback clients costs the
# writing process on this machine (bin/carpool-writefloor), paced (a step every 20 ms, as in
# run-bench.sh) and flood (steps back to back), at several connection counts; and beside it the
# io_uring floor: the same sends queued together and submitted with one io_uring_enter per step
# (--io uring). Prints a markdown table of medians; the full RESULT lines go to stderr.
#
# Knobs (environment): RUNS (per cell, default 3), CONNS ("64 256 1024"), DURATION_S (seconds of
# writing per run, 5). Arguments are passed to every run, e.g. `--events-per-write 4`.
# Runs are interleaved (run 1 of every cell, then run 2, ...) so that drift on the machine spreads
# over all the cells instead of landing on one.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
CONNS=${CONNS:-"64 256 1024"}
DURATION_S=${DURATION_S:-5}
REGIMES="paced:20 flood:0"
make -s bin/carpool-writefloor
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for run in $(seq "$RUNS"); do
	for n in $CONNS; do
		for r in $REGIMES; do
			for io in write uring; do
				line=$(bin/carpool-writefloor --conns "$n" --step-ms "${r#*:}" --duration-s "$DURATION_S" --io "$io" "$@" |
					grep '^RESULT ')
				echo "run=$run regime=${r%%:*} $line" | tee -a "$out" >&2
			done
		done
	done
done

echo
echo "Write floor on $(nproc) CPU(s), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "($RUNS runs per cell, $DURATION_S s of writing each${*:+, args: $*}; medians, min-max in brackets)"
echo
# Median and range of each key per (conns, regime) cell and way of sending, cells in the order they were run.
awk '
	function kv(k,   i, a) { for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == k) return a[2] } }
	function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
	function med(a, n) { sortn(a, n); return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
	function show(c, io,   k, n, a, b, d) {
		n = cnt[c, io]
		if (!n) return "| — | — | — "
		for (k = 1; k <= n; k++) { a[k] = w[c, io, k]; b[k] = rd[c, io, k]; d[k] = ws[c, io, k] }
		mw[io] = med(a, n)
		return sprintf("| %.2f [%.2f-%.2f] | %.2f [%.2f-%.2f] | %.0f ", mw[io], a[1], a[n], med(b, n), b[1], b[n], med(d, n))
	}
	{
		c = kv("conns") " " kv("regime"); io = kv("io"); if (io == "") io = "write"
		if (!(c in seen)) { seen[c] = 1; order[++ncell] = c }
		k = ++cnt[c, io]
		w[c, io, k] = kv("writer_us_per_write"); rd[c, io, k] = kv("reader_us_per_write"); ws[c, io, k] = kv("writes_per_s")
	}
	END {
		print "| conns | regime | write(): writer µs/write | reader µs/write | writes/s | io_uring: writer µs/send | reader µs/send | sends/s | io_uring ÷ write() |"
		print "|------:|--------|----------------:|----------------:|---------:|----------------:|----------------:|---------:|---:|"
		for (i = 1; i <= ncell; i++) {
			c = order[i]; split(c, p, " "); mw["write"] = mw["uring"] = 0
			line = sprintf("| %s | %s ", p[1], p[2]) show(c, "write") show(c, "uring")
			r = (mw["write"] > 0 && mw["uring"] > 0) ? sprintf("%.2f", mw["uring"] / mw["write"]) : "—"
			printf "%s| %s |\n", line, r
		}
	}' "$out"
