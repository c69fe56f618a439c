/* metrics: the Prometheus text of GET /metrics, rendered from declared lists (one list per family
 * kind drives both the struct that holds the figures and their output, in the order listed), and
 * the counters and histograms each worker keeps. Figures are totals over every worker. */
#ifndef CARPOOL_METRICS_H
#define CARPOOL_METRICS_H

#include "carpool/common.h"
#include "carpool/config.h"

/* The batcher's figures (struct batcher_stats), first in the output: name, batcher_stats member,
 * type, help */
#define METRICS_BATCH(X)                                                                                  \
	X(requests_total, requests, counter, "Client completion requests accepted for batching.")           \
	X(prompts_total, prompts, counter, "Prompts in those requests.")                                     \
	X(upstream_calls_total, calls, counter, "Batched upstream calls sent.")                              \
	X(upstream_call_prompts_total, call_prompts, counter, "Prompts sent in batched upstream calls.")     \
	X(bisections_total, bisections, counter, "Refused batches re-sent in halves.")                       \
	X(retries_total, retries, counter, "Upstream calls retried before any byte reached a client.")       \
	X(upstream_errors_total, upstream_errors, counter, "Upstream calls that failed.")                    \
	X(clients_gone_total, gone, counter, "Clients that left before their answer ended.")                 \
	X(requests_active, active, gauge, "Requests queued or streaming now.")

/* Counters of each worker (struct metrics) that come next: name, help */
#define METRICS_ROUTING_COUNTERS(X)                                                                     \
	X(passthrough_total, "Requests forwarded unchanged.")                                             \
	X(key_limited_total, "Requests refused with 429 by a client key's limits.")                       \
	X(config_reloads_total, "Successful config reloads (SIGHUP).")                                    \
	X(config_reload_failures_total, "Reloads refused because the new file was bad.")

/* Per upstream, labelled with its url, in order. X: a figure the caller works out (name, type, C type,
 * printf format, help); SUM: a counter of struct upstream summed over the workers' copies (name,
 * struct upstream member, help). */
#define METRICS_UPSTREAM(X, SUM)                                                                        \
	X(upstream_inflight, gauge, unsigned long, "%lu", "Upstream calls open now.")                      \
	X(upstream_sequences, gauge, unsigned long, "%lu", "Sequences carpool has in flight on the upstream now.") \
	X(upstream_sequence_capacity, gauge, unsigned long, "%lu",                                         \
	  "Sequences the upstream decodes at once (max_sequences, or learned from it; 0: unknown, unbounded).") \
	X(upstream_load_signal_age_seconds, gauge, double, "%.3f",                                         \
	  "Age of the upstream's last load figures (-1: none fresh; carpool counts its load from its own calls).") \
	SUM(upstream_http_calls_total, calls, "HTTP calls made to the upstream (batches, pass-through, probes).") \
	SUM(upstream_failures_total, errors, "Upstream calls that failed (connect, timeout, broken).")      \
	SUM(upstream_retries_total, retries_in, "Batches retried after this upstream failed them.")        \
	SUM(upstream_ejections_total, ejected_total, "Times the upstream was ejected after repeated failures.") \
	SUM(upstream_conn_reused_total, conn_reused, "Calls sent on a kept-alive (reused) connection.")    \
	SUM(upstream_conn_closed_by_server_total, conn_server_closed,                                      \
	    "Kept-alive connections the server closed: found closed before reuse, or closed under a call before any answer byte.") \
	SUM(upstream_resent_total, resent,                                                                 \
	    "Calls sent again on a new connection because the server closed the reused one before answering (not failures).") \
	SUM(upstream_conn_idle_closed_total, conn_idle_expired,                                            \
	    "Idle connections carpool closed (keepalive_ms, or the server's Keep-Alive timeout).")        \
	X(upstream_healthy, gauge, unsigned long, "%lu", "1 if the upstream is in service.")               \
	X(upstream_ready, gauge, unsigned long, "%lu",                                                     \
	  "1 if the upstream counts for /readyz: it answered and is not failing past its grace period.")

/* Then carpool_upstream_failures_by_cause_total{upstream, cause}: failed calls by cause. */
#define METRICS_NCAUSES 4

/* Each worker's own counters, after the upstreams: name, help (a name ending in _total is a counter,
 * any other a gauge) */
#define METRICS_COUNTERS(X)                                                                             \
	X(tokens_streamed_total, "Content chunks (tokens) written to streaming clients.")                 \
	X(slow_clients_dropped_total, "Clients cut off because their unread output passed max_client_buffer.") \
	X(streams_started_total, "Streaming responses started.")                                          \
	X(streams_ended_total, "Streaming responses ended (answered or client gone).")                   \
	X(client_writes_total, "Direct writes of answer bytes to client sockets: at most one per client per loop turn (what the socket does not take then leaves through the output buffer).") \
	X(client_write_submits_total, "io_uring submissions of client writes: one system call per loop turn for every client written to in it (see carpool_io_uring).")

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

/* One worker's figures: each written by that worker only (CNT_ADD), read by any (CNT_GET). */
struct metrics {
#define M_COUNTER(name, help) unsigned long name;
	METRICS_ROUTING_COUNTERS(M_COUNTER)
	METRICS_COUNTERS(M_COUNTER)
#undef M_COUNTER
#define M_HIST(name, help, bounds, scale) struct histogram name;
	METRICS_HISTOGRAMS(M_HIST)
#undef M_HIST
	unsigned long requests[ROUTE_N][600]; /* by route and HTTP status */
	bool io_uring; /* this worker's client writes go through io_uring */
};

/* Adds one observation: value in the histogram's unit (milliseconds or a count). */
void metrics_observe_ms(struct histogram *h, double ms);
void metrics_observe_count(struct histogram *h, double n);
enum metrics_route metrics_route_of(const char *path);

/* The figures of one upstream, totals over the workers. */
struct metrics_upstream {
	const char *url;
#define M_FIGURE(name, type, ctype, fmt, help) ctype name;
#define M_SUM(name, member, help) unsigned long name;
	METRICS_UPSTREAM(M_FIGURE, M_SUM)
#undef M_FIGURE
#undef M_SUM
	unsigned long failures_by_cause[METRICS_NCAUSES];
};

/* Everything one scrape shows: the batcher's totals, each upstream's, and every worker's own. */
struct metrics_view {
	struct metrics_batch {
#define M_BATCH(name, member, type, help) unsigned long name;
		METRICS_BATCH(M_BATCH)
#undef M_BATCH
	} batch;
	struct metrics_upstream ups[CFG_MAX_UPSTREAMS];
	int nups;
	const char *causes[METRICS_NCAUSES]; /* the cause label of failures_by_cause[i] */
	struct metrics *const *workers;	     /* summed: each worker's struct metrics */
	int nworkers;
};

/* Appends the Prometheus text (version 0.0.4) of v to out. */
void metrics_render(struct sbuf *out, const struct metrics_view *v);

#endif
