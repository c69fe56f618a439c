/* metrics: histograms and counters, rendered as Prometheus text. */
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

void metrics_render(struct sbuf *out, struct metrics *const *ms, int n)
{
	unsigned long v;
#define R_COUNTER(name, help)                                                                \
	v = 0;                                                                               \
	for (int w = 0; w < n; w++)                                                          \
		v += CNT_GET(ms[w]->name);                                                   \
	sbuf_printf(out, "# HELP carpool_" #name " " help "\n# TYPE carpool_" #name " %s\ncarpool_" #name " %lu\n", \
		    strstr(#name, "_total") ? "counter" : "gauge", v);
	METRICS_COUNTERS(R_COUNTER)
#undef R_COUNTER
	v = 0;
	for (int w = 0; w < n; w++)
		v += CNT_GET(ms[w]->streams_started_total) - CNT_GET(ms[w]->streams_ended_total);
	sbuf_printf(out, "# HELP carpool_open_streams Streaming responses open now.\n# TYPE carpool_open_streams gauge\n"
			 "carpool_open_streams %lu\n", v);
	struct histogram *hs[64] = {NULL};
	if (n > 64)
		n = 64;
#define R_HIST(name, help, bounds, scale)          \
	for (int w = 0; w < n; w++)                \
		hs[w] = &ms[w]->name;              \
	render_hist(out, #name, help, bounds, scale, hs, n);
	METRICS_HISTOGRAMS(R_HIST)
#undef R_HIST
	static const char *const routes[ROUTE_N] = {"/v1/completions", "/v1/embeddings", "other", "local"};
	sbuf_printf(out, "# HELP carpool_http_requests_total Client requests by route and status.\n"
			 "# TYPE carpool_http_requests_total counter\n");
	for (int r = 0; r < ROUTE_N; r++)
		for (int st = 100; st < 600; st++) {
			v = 0;
			for (int w = 0; w < n; w++)
				v += CNT_GET(ms[w]->requests[r][st]);
			if (v)
				sbuf_printf(out, "carpool_http_requests_total{route=\"%s\",status=\"%d\"} %lu\n", routes[r], st, v);
		}
}
