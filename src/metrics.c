/* metrics: histograms and counters, and the Prometheus text of a scrape from the declared lists. */
#include "carpool/metrics.h"

#include <string.h>

/* Upper bounds: milliseconds for the time histograms, a count for prompts per call. */
static const double ms_buckets[METRICS_NBUCKETS] = {1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 120000};
static const double count_buckets[METRICS_NBUCKETS] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 256, 512, 1024, 2048, 4096};

static void observe(struct histogram *h, const double *bounds, double v)
{
	int i = 0;
	while (i < METRICS_NBUCKETS && v > bounds[i])
		i++;
	CNT_ADD(h->bucket[i], 1);
	double sum;
	__atomic_load(&h->sum, &sum, __ATOMIC_RELAXED);
	sum += v;
	__atomic_store(&h->sum, &sum, __ATOMIC_RELAXED);
	CNT_ADD(h->count, 1);
}

void metrics_observe_ms(struct histogram *h, double ms) { observe(h, ms_buckets, ms); }
void metrics_observe_count(struct histogram *h, double n) { observe(h, count_buckets, n); }

enum metrics_route metrics_route_of(const char *path)
{
	if (!strcmp(path, "/v1/completions"))
		return ROUTE_COMPLETIONS;
	if (!strcmp(path, "/v1/embeddings"))
		return ROUTE_EMBEDDINGS;
	if (!strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics"))
		return ROUTE_LOCAL;
	return ROUTE_OTHER;
}

static void render_hist(struct sbuf *out, const char *name, const char *help, const double *bounds, double scale,
			struct histogram *const *hs, int n)
{
	sbuf_printf(out, "# HELP carpool_%s %s\n# TYPE carpool_%s histogram\n", name, help, name);
	unsigned long cum = 0, count = 0;
	double sum = 0;
	for (int i = 0; i <= METRICS_NBUCKETS; i++) {
		for (int w = 0; w < n; w++)
			cum += CNT_GET(hs[w]->bucket[i]);
		if (i < METRICS_NBUCKETS)
			sbuf_printf(out, "carpool_%s_bucket{le=\"%g\"} %lu\n", name, bounds[i] / scale, cum);
		else
			sbuf_printf(out, "carpool_%s_bucket{le=\"+Inf\"} %lu\n", name, cum);
	}
	for (int w = 0; w < n; w++) {
		double s;
		__atomic_load(&hs[w]->sum, &s, __ATOMIC_RELAXED);
		sum += s;
		count += CNT_GET(hs[w]->count);
	}
	sbuf_printf(out, "carpool_%s_sum %g\ncarpool_%s_count %lu\n", name, sum / scale, name, count);
}

/* The per-upstream families, one after another, each with a line per upstream. */
static void render_upstreams(struct sbuf *out, const struct metrics_view *v)
{
#define R_FAMILY(name, type, help, value, fmt)                                                       \
	sbuf_printf(out, "# HELP carpool_" #name " " help "\n# TYPE carpool_" #name " " #type "\n"); \
	for (int i = 0; i < v->nups; i++)                                                             \
		sbuf_printf(out, "carpool_" #name "{upstream=\"%s\"} " fmt "\n", v->ups[i].url, v->ups[i].value);
#define R_FIGURE(name, type, ctype, fmt, help) R_FAMILY(name, type, help, name, fmt)
#define R_SUM(name, member, help) R_FAMILY(name, counter, help, name, "%lu")
	METRICS_UPSTREAM(R_FIGURE, R_SUM)
#undef R_FIGURE
#undef R_SUM
#undef R_FAMILY
	sbuf_printf(out, "# HELP carpool_upstream_failures_by_cause_total Failed upstream calls by cause.\n"
			 "# TYPE carpool_upstream_failures_by_cause_total counter\n");
	for (int i = 0; i < v->nups; i++)
		for (int c = 0; c < METRICS_NCAUSES; c++)
			sbuf_printf(out, "carpool_upstream_failures_by_cause_total{upstream=\"%s\",cause=\"%s\"} %lu\n",
				    v->ups[i].url, v->causes[c], v->ups[i].failures_by_cause[c]);
}

/* Read without locks: each worker's counters are written by that worker only, with relaxed atomic
 * stores (CNT_ADD), and read here with relaxed atomic loads (CNT_GET). */
void metrics_render(struct sbuf *out, const struct metrics_view *v)
{
	struct metrics *const *ms = v->workers;
	int n = v->nworkers;
	unsigned long sum;
#define R_BATCH(name, member, type, help)                                                          \
	sbuf_printf(out, "# HELP carpool_" #name " " help "\n# TYPE carpool_" #name " " #type "\ncarpool_" #name " %lu\n", \
		    v->batch.name);
	METRICS_BATCH(R_BATCH)
#undef R_BATCH
#define R_COUNTER(name, help)                                                                \
	sum = 0;                                                                             \
	for (int w = 0; w < n; w++)                                                          \
		sum += CNT_GET(ms[w]->name);                                                 \
	sbuf_printf(out, "# HELP carpool_" #name " " help "\n# TYPE carpool_" #name " %s\ncarpool_" #name " %lu\n", \
		    strstr(#name, "_total") ? "counter" : "gauge", sum);
	METRICS_ROUTING_COUNTERS(R_COUNTER)
	render_upstreams(out, v);
	METRICS_COUNTERS(R_COUNTER)
#undef R_COUNTER
	sum = 0;
	for (int w = 0; w < n; w++)
		sum += CNT_GET(ms[w]->streams_started_total) - CNT_GET(ms[w]->streams_ended_total);
	sbuf_printf(out, "# HELP carpool_open_streams Streaming responses open now.\n# TYPE carpool_open_streams gauge\n"
			 "carpool_open_streams %lu\n", sum);
	bool uring = n > 0;
	for (int w = 0; w < n; w++)
		uring = uring && CNT_GET(ms[w]->io_uring);
	sbuf_printf(out, "# HELP carpool_io_uring 1: client writes go through io_uring (io_uring: auto or on, and the "
			 "kernel offers it); 0: one send() each (io_uring: off, or unavailable; TLS clients always).\n"
			 "# TYPE carpool_io_uring gauge\ncarpool_io_uring %d\n", uring);
	struct histogram *hs[64] = {NULL};
	if (n > 64)
		n = 64;
#define R_HIST(name, help, bounds, scale)          \
	for (int w = 0; w < n; w++)                \
		hs[w] = &ms[w]->name;     \
	render_hist(out, #name, help, bounds, scale, hs, n);
	METRICS_HISTOGRAMS(R_HIST)
#undef R_HIST
	static const char *const routes[ROUTE_N] = {"/v1/completions", "/v1/embeddings", "other", "local"};
	sbuf_printf(out, "# HELP carpool_http_requests_total Client requests by route and status.\n"
			 "# TYPE carpool_http_requests_total counter\n");
	for (int r = 0; r < ROUTE_N; r++)
		for (int st = 100; st < 600; st++) {
			sum = 0;
			for (int w = 0; w < n; w++)
				sum += CNT_GET(ms[w]->requests[r][st]);
			if (sum)
				sbuf_printf(out, "carpool_http_requests_total{route=\"%s\",status=\"%d\"} %lu\n", routes[r], st, sum);
		}
}
