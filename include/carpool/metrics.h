/* metrics: counters and histograms of one worker, declared once (X-macro lists) and rendered as
 * Prometheus text summed over every worker. */
#ifndef CARPOOL_METRICS_H
#define CARPOOL_METRICS_H

#include "carpool/common.h"

/* name, help */
#define METRICS_COUNTERS(X)                                                                             \
	X(tokens_streamed_total, "Content chunks (tokens) written to streaming clients.")                 \
	X(slow_clients_dropped_total, "Clients cut off because their unread output passed max_client_buffer.") \
	X(streams_started_total, "Streaming responses started.")                                          \
	X(streams_ended_total, "Streaming responses ended (answered or client gone).")                   \
	X(client_writes_total, "Direct writes of answer bytes to client sockets: at most one per client per loop turn (what the socket does not take then leaves through the output buffer).")

/* name, help, bucket bounds (a static array), unit scale for rendering */
#define METRICS_HISTOGRAMS(X)                                                                           \
	X(queue_seconds, "Time a request waited for its batch to go upstream.", ms_buckets, 1000.0)       \
	X(ttft_seconds, "Time from request to the first byte of the answer.", ms_buckets, 1000.0)         \
	X(duration_seconds, "Time from request to the end of the answer.", ms_buckets, 1000.0)            \
	X(prompts_per_call, "Prompts (or inputs) in each batched upstream call.", count_buckets, 1.0)

#define METRICS_NBUCKETS 16

struct histogram {
	unsigned long bucket[METRICS_NBUCKETS + 1]; /* the last one: +Inf */
	double sum;
	unsigned long count;
};

/* other: every path passed through (and /v1/models); local: carpool's own /healthz, /readyz, /metrics */
enum metrics_route { ROUTE_COMPLETIONS, ROUTE_EMBEDDINGS, ROUTE_OTHER, ROUTE_LOCAL, ROUTE_N };

struct metrics {
#define M_COUNTER(name, help) unsigned long name;
	METRICS_COUNTERS(M_COUNTER)
#undef M_COUNTER
#define M_HIST(name, help, bounds, scale) struct histogram name;
	METRICS_HISTOGRAMS(M_HIST)
#undef M_HIST
	unsigned long requests[ROUTE_N][600]; /* by route and HTTP status */
};

/* Adds one observation: value in the histogram's unit (milliseconds or a count). */
void metrics_observe_ms(struct histogram *h, double ms);
void metrics_observe_count(struct histogram *h, double n);
enum metrics_route metrics_route_of(const char *path);

/* Appends the Prometheus text of the sum of ms[0..n) to out. */
void metrics_render(struct sbuf *out, struct metrics *const *ms, int n);

#endif
