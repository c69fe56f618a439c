#!/usr/bin/env bash
# Does batching cost latency? Direct calls against the same calls through carpool with its DEFAULT
# config (only listen and upstream set), in front of a simulated upstream that decodes like vLLM:
# 256 sequence slots scheduled one sequence at a time, 20 ms per token, answers of 20..500 tokens.
# Closed loop at 16, 64, 256 and 512 concurrent streams (clients ramped in over 1 s, two requests
# each), an open-loop Poisson curve, one request at a time, and a hosted API with a request budget
# (carpool configured with that budget). Every token is verified. Medians of
# RUNS runs; direct and carpool run side by side in each run (same prompts, alternating order).
# Writes bench/RESULTS-latency.md: SECTION=after (default) rewrites the current figures and keeps
# the "before" section; SECTION=before rewrites the "before" section (the baseline) instead.
#
# THE UPSTREAM IS A SIMULATOR (bench/sim.c), not a model. Loopback only.
# Knobs: RUNS (3), CONCS ("16 64 256 512"), RATES (arrivals/s, "12 30 60"), POISSON_S (6 s of arrivals
# per rate), REQS (2 per client), LIGHT_REQS (100), HOSTED_RPM (20), HOSTED_S (9 s of arrivals at
# 10 x HOSTED_RPM per minute), QUICK=1 (one run, 16 and 512 streams, one rate).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
if [[ ${QUICK:-0} == 1 ]]; then
	: "${RUNS:=1}" "${CONCS:=16 512}" "${RATES:=30}" "${POISSON_S:=4}" "${LIGHT_REQS:=20}"
fi
RUNS=${RUNS:-3}
CONCS=${CONCS:-"16 64 256 512"}
RATES=${RATES:-"12 30 60"}
POISSON_S=${POISSON_S:-6}
REQS=${REQS:-2}
LIGHT_REQS=${LIGHT_REQS:-100}
HOSTED_RPM=${HOSTED_RPM:-20}
HOSTED_S=${HOSTED_S:-9}
SECTION=${SECTION:-after}
SLOTS=256
STEP_MS=20
ANSWERS=20:500
RAMP_S=1
OUT=bench/RESULTS-latency.md
# carpool's default window, as the documented example states it
MAX_WAIT_MS=$(awk '$1 == "max_wait_ms:" { print $2; exit }' configs/carpool.yaml)
: "${MAX_WAIT_MS:=10}"
[[ $SECTION == before || $SECTION == after ]] || { echo "SECTION must be before or after" >&2; exit 2; }

T0=$(date +%s)
bench_start
start_sim "$work/sim.out" --slots "$SLOTS" --step-ms "$STEP_MS" --answer-tokens "$ANSWERS"
pids+=("$sim_pid")
main_sim=$sim_port
default_config "$work/carpool.yaml" "$sim_port"
start_carpool "$work/carpool.yaml" "$work/carpool.log"
pids+=("$cp_pid")
declare -A port=([direct]=$sim_port [carpool]=$cp_port)

fail=0
# measure KIND SCENARIO VIA RUN LOADGEN-ARGS...: one loadgen run; appends a line to $work/data. It
# loads port[VIA] (or $target_port); the upstream's figures come from the sim at $stat_port (default:
# the main one); with expect_errors=1 a failed request does not fail the script (the direct clients
# of a hosted API get 429s).
measure() {
	local kind=$1 scen=$2 via=$3 run=$4 sp=${stat_port:-$main_sim}
	shift 4
	curl -s -X POST "http://127.0.0.1:$sp/stats/reset" >/dev/null
	local r calls prompts waiting limited
	r=$(bin/carpool-loadgen --url "http://127.0.0.1:${target_port:-${port[$via]}}" --answer-tokens "$ANSWERS" --timeout-s 120 \
		--quiet "$@" 2>>"$work/loadgen.err" | tail -1) || ((${expect_errors:-0})) || fail=1
	read -r calls prompts waiting limited < <(sim_stats "$sp" completion_calls prompts max_waiting rate_limited)
	echo "[$(($(date +%s) - T0)) s] run $run $kind $scen via $via: $r calls=$calls peak_waiting=$waiting"
	echo "$kind $scen $via $run $(field "$r" ttft_p50_ms) $(field "$r" ttft_p99_ms) $(field "$r" tokens_per_s)" \
		"$calls $prompts $(field "$r" errors) $(field "$r" mismatches) $waiting $limited" >>"$work/data"
}
# Direct first in odd runs, carpool first in even ones.
order() { if (($1 % 2)); then echo "direct carpool"; else echo "carpool direct"; fi; }

for run in $(seq "$RUNS"); do
	for c in $CONCS; do
		for via in $(order "$run"); do
			measure closed "$c" "$via" "$run" --concurrency "$c" --requests "$REQS" --ramp-s "$RAMP_S" \
				--prefix "lat-$run-$c-"
		done
	done
	for rate in $RATES; do
		n=$(awk -v r="$rate" -v s="$POISSON_S" 'BEGIN { printf "%d", r * s }')
		for via in $(order "$run"); do
			measure poisson "$rate" "$via" "$run" --concurrency "$n" --requests 1 --rate "$rate" --seed "$run" \
				--prefix "poi-$run-$rate-"
		done
	done
	# One request at a time: answers capped at 2 tokens, so a run is short; TTFT is what matters.
	for via in $(order "$run"); do
		measure light 1 "$via" "$run" --concurrency 1 --requests "$LIGHT_REQS" --max-tokens 2 --prefix "one-$run-"
	done
	# A hosted API (OpenAI dialect, no slot limit) with a budget of HOSTED_RPM calls a minute, and
	# arrivals at ten times that; carpool is told the budget. A fresh simulator for each side. Its
	# outcome is a count, not a latency to take a median of: the first run only.
	((run == 1)) || continue
	start_sim "$work/hd.out" --dialect openai --step-ms "$STEP_MS" --answer-tokens "$ANSWERS" --rpm "$HOSTED_RPM"
	hd_pid=$sim_pid hd_port=$sim_port
	start_sim "$work/hc.out" --dialect openai --step-ms "$STEP_MS" --answer-tokens "$ANSWERS" --rpm "$HOSTED_RPM"
	hc_pid=$sim_pid hc_port=$sim_port
	printf 'listen:\n  - address: 127.0.0.1:0\nupstreams:\n  - url: http://127.0.0.1:%s\n    dialect: openai\n    rate_limit_rpm: %s\n' \
		"$hc_port" "$HOSTED_RPM" >"$work/hosted.yaml"
	start_carpool "$work/hosted.yaml" "$work/hosted-$run.log"
	pids+=("$hd_pid" "$hc_pid" "$cp_pid")
	declare -A hport=([direct]=$hd_port [carpool]=$cp_port) hstat=([direct]=$hd_port [carpool]=$hc_port)
	hrate=$(awk -v r="$HOSTED_RPM" 'BEGIN { printf "%.4f", r * 10 / 60 }')
	hn=$(awk -v r="$hrate" -v s="$HOSTED_S" 'BEGIN { printf "%d", r * s }')
	for via in $(order "$run"); do
		target_port=${hport[$via]} stat_port=${hstat[$via]} expect_errors=1 measure hosted "$HOSTED_RPM" "$via" "$run" \
			--concurrency "$hn" --requests 1 --rate "$hrate" --seed "$run" --prefix "hosted-$run-" --max-details 0
	done
	kill "$hd_pid" "$hc_pid" "$cp_pid"
done

# ------------------------------------------------------------------ the report
summary() {
	# svc: a request's mean time in a slot, s (mean answer x a step with every slot busy)
	awk -v slots="$SLOTS" -v maxwait="$MAX_WAIT_MS" -v hrpm="$HOSTED_RPM" -v hn="${hn:-0}" -v svc="$(awk -v a="$ANSWERS" -v st="$STEP_MS" -v sl="$SLOTS" \
		'BEGIN { split(a, r, ":"); print (r[1] + r[2]) / 2 * (st + 0.002 * sl) / 1000 }')" '
	function med(s,   a, n, i, j, t) {
		n = split(s, a, " ")
		for (i = 2; i <= n; i++) for (j = i; j > 1 && a[j-1] + 0 > a[j] + 0; j--) { t = a[j]; a[j] = a[j-1]; a[j-1] = t }
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function lo(s,   a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 < m + 0) m = a[i]; return m }
	function hi(s,   a, n, i, m) { n = split(s, a, " "); m = a[1]; for (i = 2; i <= n; i++) if (a[i] + 0 > m + 0) m = a[i]; return m }
	function add(arr, k, v) { arr[k] = arr[k] == "" ? v : arr[k] " " v }
	{
		k = $1 SUBSEP $2 SUBSEP $3
		add(p50, k, $5); add(p99, k, $6); add(tps, k, $7); add(ppc, k, $8 > 0 ? $9 / $8 : 0)
		err[k] += $10; mis[k] += $11; add(wait, k, $12); add(calls, k, $8); add(errs, k, $10); add(refused, k, $13)
		tp[$1, $2, $3, $4] = $7
		if (!(($1, $2) in seen)) { seen[$1, $2] = 1; scen[$1] = ($1 in scen) ? scen[$1] " " $2 : $2 }
		if ($1 == "hosted") hrpm = $2
		if ($4 > nrun) nrun = $4
	}
	function ratios(kind, s,   r, out) {
		out = ""
		for (r = 1; r <= nrun; r++)
			if (tp[kind, s, "direct", r] > 0) out = out (out == "" ? "" : " ") tp[kind, s, "carpool", r] / tp[kind, s, "direct", r]
		return out
	}
	# table KIND TITLE: one row per scenario, direct beside carpool
	function table(kind, title,   n, list, i, s, d, c, rr) {
		printf "| %s | direct TTFT p50 / p99 ms | carpool TTFT p50 / p99 ms | tokens/s direct -> carpool (ratio) | prompts per call | peak waiting in sim (direct / carpool) | errors / mismatches | spread over runs: TTFT p99 direct, carpool; tokens/s ratio |\n", title
		print "|---:|---:|---:|---|---:|---:|---:|---|"
		n = split(scen[kind], list, " ")
		for (i = 1; i <= n; i++) {
			s = list[i]; d = kind SUBSEP s SUBSEP "direct"; c = kind SUBSEP s SUBSEP "carpool"; rr = ratios(kind, s)
			printf "| %s | %.1f / %.1f | %.1f / %.1f | %.0f -> %.0f (%.3f) | %.1f | %d / %d | %d / %d | %.0f-%.0f, %.0f-%.0f; %.3f-%.3f |\n", s,
				med(p50[d]), med(p99[d]), med(p50[c]), med(p99[c]), med(tps[d]), med(tps[c]), med(rr), med(ppc[c]),
				med(wait[d]), med(wait[c]), err[d] + err[c], mis[d] + mis[c], lo(p99[d]), hi(p99[d]), lo(p99[c]), hi(p99[c]), lo(rr), hi(rr)
		}
		print ""
	}
	function verdict(ok) { return ok ? "**pass**" : "**FAIL**" }
	END {
		print "### Closed loop: concurrent streams, " "two requests each, ramped in over 1 s"
		print ""
		table("closed", "streams")
		print "### Open loop: Poisson arrivals"
		print ""
		table("poisson", "arrivals/s")
		d = "light" SUBSEP 1 SUBSEP "direct"; c = "light" SUBSEP 1 SUBSEP "carpool"
		print "### One request at a time"
		print ""
		printf "One client, closed loop, answers capped at 2 tokens. TTFT p50 direct %.2f ms, via carpool %.2f ms (added %+.2f ms; per run: direct %s, carpool %s); p99 %.2f / %.2f ms; errors / mismatches %d / %d.\n\n",
			med(p50[d]), med(p50[c]), med(p50[c]) - med(p50[d]), p50[d], p50[c], med(p99[d]), med(p99[c]), err[d] + err[c], mis[d] + mis[c]
		if ("hosted" in scen) {
			hd = "hosted" SUBSEP hrpm SUBSEP "direct"; hc = "hosted" SUBSEP hrpm SUBSEP "carpool"
			print "### A hosted API with a request budget"
			print ""
			printf "carpool-sim `--dialect openai --rpm %d` (at most %d calls in any 60 s, 429 past it) with no slot limit; %d requests\n", hrpm, hrpm, hn
			printf "arriving at 10 x the budget (Poisson, %.2f/s); carpool configured with `rate_limit_rpm: %d` (and nothing else but\n", hrpm * 10 / 60, hrpm
			print "listen and upstream). A fresh simulator for each side: the budget is whole at the start. First run only."
			print ""
			print "| via | 429s to clients | upstream calls accepted | refused by the upstream (429) | TTFT p50 / p99 ms (served) |"
			print "|---|---|---|---|---|"
			printf "| direct | %s | %s | %s | %.0f / %.0f |\n", errs[hd], calls[hd], refused[hd], med(p50[hd]), med(p99[hd])
			printf "| carpool | %s | %s | %s | %.0f / %.0f |\n", errs[hc], calls[hc], refused[hc], med(p50[hc]), med(p99[hc])
			print ""
		}
		print "### Targets of issue 8 against these figures"
		print ""
		print "| target | case | measured | verdict |"
		print "|---|---|---|---|"
		split("closed poisson", kinds, " ")
		for (q = 1; q <= 2; q++) {
			kind = kinds[q]
			n = split(scen[kind], list, " ")
			for (i = 1; i <= n; i++) {
				s = list[i]; dk = kind SUBSEP s SUBSEP "direct"; ck = kind SUBSEP s SUBSEP "carpool"; r = med(ratios(kind, s))
				# closed loop: saturated past the slots; open loop: offered load (rate x mean answer time) past the slots
				sat = kind == "closed" ? s + 0 > slots : s * svc > slots
				label = kind == "closed" ? s " streams" : s " arrivals/s (Poisson)"
				if (!sat) {
					ok = med(p99[ck]) <= med(p99[dk]) + maxwait
					printf "| not saturated: TTFT p99 <= direct + %d ms | %s | %.1f vs %.1f + %d ms | %s |\n", maxwait, label, med(p99[ck]), med(p99[dk]), maxwait, verdict(ok)
					printf "| not saturated: tokens/s >= 0.98 x direct | %s | %.3f x | %s |\n", label, r, verdict(r >= 0.98)
					if (kind == "closed" && s == 256)
						printf "| not saturated: >= 3 prompts per call at 256 streams | %s | %.1f | %s |\n", label, med(ppc[ck]), verdict(med(ppc[ck]) >= 3)
				} else {
					printf "| saturated: TTFT p50 <= 1.05 x direct | %s | %.1f vs %.1f ms (%.3f x) | %s |\n", label, med(p50[ck]), med(p50[dk]), med(p50[ck]) / med(p50[dk]), verdict(med(p50[ck]) <= 1.05 * med(p50[dk]))
					printf "| saturated: TTFT p99 <= 1.05 x direct | %s | %.1f vs %.1f ms (%.3f x) | %s |\n", label, med(p99[ck]), med(p99[dk]), med(p99[ck]) / med(p99[dk]), verdict(med(p99[ck]) <= 1.05 * med(p99[dk]))
					printf "| saturated: tokens/s >= 0.98 x direct | %s | %.3f x | %s |\n", label, r, verdict(r >= 0.98)
				}
				if (err[dk] + err[ck] + mis[dk] + mis[ck])
					printf "| every request answered, every token right | %s | %d errors, %d mismatches | **FAIL** |\n", label, err[dk] + err[ck], mis[dk] + mis[ck]
			}
		}
		added = med(p50[c]) - med(p50[d])
		printf "| one request at a time: added TTFT p50 <= 0.5 ms | 1 client | %+.2f ms | %s |\n", added, verdict(added <= 0.5)
		if ("hosted" in scen) {
			ok = err[hc] == 0 && mis[hc] == 0 && hi(refused[hc]) == 0 && hi(calls[hc]) <= hrpm && err[hd] > 0
			printf "| hosted API: every client served, no 429 to a client, calls within the budget (direct gets 429s) | %d req/min, arrivals at 10 x | carpool: %d errors, %d refused upstream, at most %d calls per run; direct: %d 429s | %s |\n",
				hrpm, err[hc] + mis[hc], hi(refused[hc]), hi(calls[hc]), err[hd], verdict(ok)
		}
		print "| the demo shows carpool TTFT within these bounds | - | see `bash bench/demo.sh` and the README | - |"
	}' "$work/data"
}

{
	echo "#### $(date -u '+%Y-%m-%d %H:%M UTC'), git $(git rev-parse --short HEAD) ($(git log -1 --format=%s | cut -c1-80))"
	echo
	echo "carpool-sim \`--slots $SLOTS --step-ms $STEP_MS --answer-tokens $ANSWERS\` (call 1 ms, +2 µs per active sequence"
	echo "per step); carpool with the generated default config (listen + upstream only; max_wait_ms $MAX_WAIT_MS per the"
	echo "documented example). $RUNS run(s), medians; in each run direct and carpool take the same prompts one after the"
	echo "other. Open loop: ${POISSON_S} s of arrivals per rate; TTFT counts from each arrival. Prompts per call from the"
	echo "sim's /stats. Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (2 cores, shared with other builds and"
	echo "tests: the spread columns show how noisy the runs were). Whole script: $(($(date +%s) - T0)) s."
	echo
	summary
} >"$work/section.md"

# Assemble: header, the current ("after") section, the "before" section; each run replaces its own.
keep_section() { # NAME: the body of "## NAME..." in the old file, up to the next "## "
	[[ -f $OUT ]] && awk -v h="## $1" 'index($0, h) == 1 { on = 1; next } /^## / { on = 0 } on' "$OUT" || true
}
old_before=$(keep_section "Before")
old_after=$(keep_section "After")
{
	echo "# Latency of batching: direct vs carpool (default config)"
	echo
	echo "Reproduce: \`bash bench/latency.sh\` (about 15 minutes; \`QUICK=1\` or \`RUNS=1\` shorten it; also run by"
	echo "\`make bench\`). \`SECTION=before bash bench/latency.sh\` rewrites the baseline section instead."
	echo "THE UPSTREAM IS carpool-sim, A SIMULATOR: these figures measure scheduling, not a model."
	echo
	echo "## After: the current code"
	echo
	if [[ $SECTION == after ]]; then cat "$work/section.md"; else printf '%s\n' "${old_after:-(not measured yet)}"; fi
	echo
	echo "## Before: today's defaults (room counted in calls, max_inflight 8, policy adaptive)"
	echo
	if [[ $SECTION == before ]]; then cat "$work/section.md"; else printf '%s\n' "${old_before:-(not measured)}"; fi
} | cat -s >"$work/out.md"
mv "$work/out.md" "$OUT"
cat "$work/section.md"
[[ -s $work/loadgen.err ]] && { echo "loadgen reported:"; head -20 "$work/loadgen.err"; }
exit "$fail"
