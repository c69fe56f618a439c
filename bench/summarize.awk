# Summarizes the benchmark's raw runs into Markdown tables (stdout) and gnuplot data files.
# usage: awk -F'\t' -v out=PLOTDIR -v cp_inflight=N -f bench/summarize.awk runs.tsv rss.tsv mem.tsv
# Plain POSIX awk (works with mawk): no asort, no gensub.
#
# runs.tsv columns: 1 regime 2 conc 3 rep 4 proxy 5 reqs_per_client 6 requests 7 ok 8 errors
#   9 mismatches 10 tokens 11 elapsed_s 12 tokens_per_s 13 ttft_p50_ms 14 ttft_p99_ms 15 gap_p99_ms
#   16 latency_p50_ms 17 latency_p99_ms 18 proxy_us_per_tok 19 sim_us_per_tok 20 upstream_calls
#   21 upstream_prompts 22 max_prompts_per_call 23 loadgen_rc
# rss.tsv: regime conc proxy peak_rss_kib
# mem.tsv: proxy idle_kib held_kib streams upstream_calls_open prompts_upstream

FNR == 1 { file++; next }

file == 1 {
	k = $1 SUBSEP $2 SUBSEP $4
	n = ++cnt[k]
	for (c = 8; c <= 23; c++) val[k, n, c] = $c
	val[k, n, 24] = ($18 == "-" || $19 == "-") ? "-" : $18 + $19 # proxy + simulator CPU per token
	if (!(($1, $2) in seen_cell)) { seen_cell[$1, $2] = 1; ncell[$1]++; cells[$1, ncell[$1]] = $2 }
	if (!($1 in seen_regime)) { seen_regime[$1] = 1; regimes[++nreg] = $1 }
	next
}
file == 2 { rss[$1, $2, $3] = $4; next }
file == 3 { nmem++; mem_label[nmem] = $1; mem_idle[nmem] = $2; mem_held[nmem] = $3; mem_n[nmem] = $4; mem_calls[nmem] = $5; mem_prompts[nmem] = $6; next }

# --- statistics over the runs of key k, column c (optionally minus a constant) -------------------
function collect(k, c, off,    i, m, v) {
	m = 0
	for (i = 1; i <= cnt[k]; i++) {
		v = val[k, i, c]
		if (v == "-" || v == "") continue
		xs[++m] = v - off
	}
	for (i = 2; i <= m; i++) { v = xs[i]; j = i - 1; while (j >= 1 && xs[j] > v) { xs[j + 1] = xs[j]; j-- } xs[j + 1] = v }
	return m
}
function median_of(m) { if (m == 0) return ""; return (m % 2) ? xs[(m + 1) / 2] : (xs[m / 2] + xs[m / 2 + 1]) / 2 }
function med(k, c, off,    m) { m = collect(k, c, off); return median_of(m) }
function lo(k, c, off,    m) { m = collect(k, c, off); return m ? xs[1] : "" }
function hi(k, c, off,    m) { m = collect(k, c, off); return m ? xs[m] : "" }
function total(k, c,    i, s) { s = 0; if (!(k in cnt)) return 0; for (i = 1; i <= cnt[k]; i++) s += val[k, i, c]; return s }
function fmt(x, f) { return x == "" ? "—" : sprintf(f, x) }
function cell(k, c, f, off,    m, a, b, md) {
	m = collect(k, c, off)
	if (m == 0) return "—"
	md = median_of(m); a = xs[1]; b = xs[m]
	return sprintf(f " (" f "–" f ")", md, a, b)
}
function ppc(k,    i, p, q, s, m) { # prompts per upstream call: median over runs, with range
	m = 0
	for (i = 1; i <= cnt[k]; i++) { p = val[k, i, 21]; q = val[k, i, 20]; if (q > 0) xs[++m] = p / q }
	for (i = 2; i <= m; i++) { s = xs[i]; j = i - 1; while (j >= 1 && xs[j] > s) { xs[j + 1] = xs[j]; j-- } xs[j + 1] = s }
	if (m == 0) return "—"
	return sprintf("%.1f (%.1f–%.1f)", median_of(m), xs[1], xs[m])
}
function maxcol(k, c,    i, s) { s = 0; for (i = 1; i <= cnt[k]; i++) if (val[k, i, c] + 0 > s) s = val[k, i, c] + 0; return s }
function ratio_cell(r, conc,    kn, kc, i, m, s, a, b) { # carpool/nginx CPU per token, run i paired with run i
	kn = r SUBSEP conc SUBSEP "nginx"; kc = r SUBSEP conc SUBSEP "carpool"
	m = 0
	for (i = 1; i <= cnt[kc] && i <= cnt[kn]; i++)
		if (val[kn, i, 18] != "-" && val[kn, i, 18] > 0 && val[kc, i, 18] != "-") xs[++m] = val[kc, i, 18] / val[kn, i, 18]
	for (i = 2; i <= m; i++) { s = xs[i]; j = i - 1; while (j >= 1 && xs[j] > s) { xs[j + 1] = xs[j]; j-- } xs[j + 1] = s }
	if (m == 0) return "—"
	a = xs[1]; b = xs[m]
	return sprintf("**%.2f** (%.2f–%.2f)", med(kc, 18, 0) / med(kn, 18, 0), a, b)
}

END {
	title["paced"] = "Paced regime (sim --step-ms 20: one decode step every 20 ms; answers of 3..16 tokens)"
	title["flood"] = "Flood regime (sim --step-ms 0: no delay; CPU-bound; answers of 3..16 tokens, interleaved)"
	title["paced-64"] = "Paced, 64-token answers (sim --step-ms 20 --answer-tokens 64:64)"
	title["flood-64"] = "Flood, 64-token answers, interleaved (sim --step-ms 0 --answer-tokens 64:64)"
	title["flood-64-burst"] = "Flood, 64-token answers in one read (sim --step-ms 0 --answer-tokens 64:64 --burst)"
	nprox = split("direct nginx carpool carpool-single", proxies, " ")

	print "## Headline: CPU per streamed token of the proxy process (µs)"
	print ""
	print "Median (min–max) of the runs; the ratio is carpool ÷ nginx (median of carpool over median of nginx; the"
	print "range pairs run i of carpool with run i of nginx). Below 1 means carpool spends less CPU per token."
	print "\"proxy + sim\" adds the simulator's own CPU per token in the same run: what merging saves upstream. The"
	print "simulator's per-call cost is not a real server's, so read that column as a direction, not a price."
	print ""
	print "carpool-single is carpool with batching off (max_batch_size 1), measured in the 64-token regimes only."
	print ""
	print "| regime | concurrency | nginx µs/token | carpool µs/token | carpool / nginx | carpool prompts per upstream call | carpool-single µs/token | proxy + sim µs/token: nginx | proxy + sim µs/token: carpool | errors + mismatches (all runs, all targets) |"
	print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
	for (ri = 1; ri <= nreg; ri++) {
		r = regimes[ri]
		for (ci = 1; ci <= ncell[r]; ci++) {
			conc = cells[r, ci]
			kn = r SUBSEP conc SUBSEP "nginx"; kc = r SUBSEP conc SUBSEP "carpool"; ks = r SUBSEP conc SUBSEP "carpool-single"
			bad = 0
			for (pi = 1; pi <= nprox; pi++) { k = r SUBSEP conc SUBSEP proxies[pi]; bad += total(k, 8) + total(k, 9) }
			printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r, conc, cell(kn, 18, "%.2f", 0), cell(kc, 18, "%.2f", 0),
				ratio_cell(r, conc), ppc(kc), (ks in cnt) ? cell(ks, 18, "%.2f", 0) : "—", cell(kn, 24, "%.2f", 0), cell(kc, 24, "%.2f", 0),
				bad ? "**" bad "**" : "0"
		}
	}
	print ""

	for (ri = 1; ri <= nreg; ri++) {
		r = regimes[ri]
		print "## " (r in title ? title[r] : r)
		print ""
		print "| C | via | proxy CPU µs/token | sim CPU µs/token | tokens/s | TTFT p50 ms | TTFT p99 ms | added TTFT p50 ms | added TTFT p99 ms | prompts / upstream call | largest call | peak RSS MiB | errors | mismatches |"
		print "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		for (ci = 1; ci <= ncell[r]; ci++) {
			conc = cells[r, ci]
			kd = r SUBSEP conc SUBSEP "direct"
			d50 = med(kd, 13, 0); d99 = med(kd, 14, 0)
			for (pi = 1; pi <= nprox; pi++) {
				p = proxies[pi]
				k = r SUBSEP conc SUBSEP p
				if (!(k in cnt)) continue
				rs = ((r, conc, p) in rss) ? sprintf("%.1f", rss[r, conc, p] / 1024) : "—"
				e = total(k, 8); mm = total(k, 9)
				printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", conc, p,
					p == "direct" ? "—" : cell(k, 18, "%.2f", 0), cell(k, 19, "%.2f", 0), cell(k, 12, "%.0f", 0),
					cell(k, 13, "%.1f", 0), cell(k, 14, "%.1f", 0),
					p == "direct" ? "—" : cell(k, 13, "%+.1f", d50), p == "direct" ? "—" : cell(k, 14, "%+.1f", d99),
					ppc(k), maxcol(k, 22), rs, e ? "**" e "**" : "0", mm ? "**" mm "**" : "0"
				if (p != "direct") {
					f = out "/" r "-" p ".dat"
					printf "%s %s %s %s %s %s %s\n", conc, med(k, 18, 0), lo(k, 18, 0), hi(k, 18, 0),
						med(k, 13, d50), lo(k, 13, d50), hi(k, 13, d50) > f
				}
			}
		}
		print ""
	}

	print "## Memory per held stream"
	print ""
	print "RSS (VmRSS; nginx: master + worker) of a fresh proxy, idle and with the streams held open."
	print ""
	print "| proxy | idle RSS KiB | RSS with streams open KiB | client streams open | **KiB per held stream** | upstream calls open | prompts sent upstream so far |"
	print "|---|---:|---:|---:|---:|---:|---:|"
	for (i = 1; i <= nmem; i++)
		printf "| %s | %d | %d | %d | **%s** | %s | %s |\n", mem_label[i], mem_idle[i], mem_held[i], mem_n[i],
			(mem_n[i] > 0 ? sprintf("%.1f", (mem_held[i] - mem_idle[i]) / mem_n[i]) : "—"), mem_calls[i], mem_prompts[i]
	print ""
	print "With the bench config (adaptive, max_inflight " cp_inflight ") carpool sends the first requests alone while it has"
	print "room and queues the rest until an upstream call ends, so most of the held streams wait in carpool's queue"
	print "(they are open client streams all the same); the fixed-policy line packs every stream into an upstream call."
}
