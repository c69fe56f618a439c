#!/usr/bin/env bash
# The write floor: what one write() of one SSE token event to each of N loopback clients costs the
# writing process on this machine (bin/carpool-writefloor), paced (a step every 20 ms, as in
# run-bench.sh) and flood (steps back to back), at several connection counts. Prints a markdown
# table of medians; the full RESULT lines go to stderr.
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
			line=$(bin/carpool-writefloor --conns "$n" --step-ms "${r#*:}" --duration-s "$DURATION_S" "$@" |
				grep '^RESULT ')
			echo "run=$run regime=${r%%:*} $line" | tee -a "$out" >&2
		done
	done
done

echo
echo "Write floor on $(nproc) CPU(s), $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), Linux $(uname -r)"
echo "($RUNS runs per cell, $DURATION_S s of writing each${*:+, args: $*}; medians, min-max in brackets)"
echo
# Median and range of each key per (conns, regime) cell, cells in the order they were run.
awk '
	function kv(k,   i, a) { for (i = 1; i <= NF; i++) { split($i, a, "="); if (a[1] == k) return a[2] } }
	function sortn(a, n,   i, j, t) { for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] > a[j]; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t } }
	function med(a, n) { sortn(a, n); return n % 2 ? a[(n+1)/2] : (a[n/2] + a[n/2+1]) / 2 }
	{
		c = kv("conns") " " kv("regime")
		if (!(c in cnt)) order[++ncell] = c
		k = ++cnt[c]
		w[c, k] = kv("writer_us_per_write"); rd[c, k] = kv("reader_us_per_write"); ws[c, k] = kv("writes_per_s")
	}
	END {
		print "| conns | regime | writer µs/write | reader µs/write | writes/s |"
		print "|------:|--------|----------------:|----------------:|---------:|"
		for (i = 1; i <= ncell; i++) {
			c = order[i]; n = cnt[c]; split(c, p, " ")
			for (k = 1; k <= n; k++) { a[k] = w[c, k]; b[k] = rd[c, k]; d[k] = ws[c, k] }
			mw = med(a, n); mr = med(b, n); md = med(d, n)
			printf "| %s | %s | %.2f [%.2f-%.2f] | %.2f [%.2f-%.2f] | %.0f |\n", p[1], p[2], mw, a[1], a[n], mr, b[1], b[n], md
		}
	}' "$out"
