/* upstream: one pool per configured upstream: keep-alive HTTP/1.1 connections (carpool's own client on
 * bufferevents: Content-Length, chunked and read-to-close bodies, 1xx skipped), TLS with
 * verification, timeouts, the injected credential, and the dialect the server speaks. */
#ifndef CARPOOL_UPSTREAM_H
#define CARPOOL_UPSTREAM_H

#include "carpool/common.h"
#include "carpool/config.h"

struct event_base;
struct evdns_base;
struct evkeyvalq;

enum upcall_error {
	UPE_NONE = 0,
	UPE_CONNECT,	/* could not connect (refused, unreachable, connect timeout, TLS handshake) */
	UPE_FIRST_BYTE, /* no response head within first_byte_ms */
	UPE_IDLE,	/* no bytes for idle_ms in the middle of a response */
	UPE_BROKEN,	/* the connection broke or the response was malformed */
};

struct upcall_ops {
	/* The response head arrived. */
	void (*on_head)(void *arg, int status, const struct evkeyvalq *headers);
	/* Body bytes, as they arrive (already de-chunked). */
	void (*on_data)(void *arg, const char *data, size_t len);
	/* The call is over: err is UPE_NONE for a complete response. The call is freed after this. */
	void (*on_done)(void *arg, enum upcall_error err);
};

/* The health of one configured upstream, one record for all workers: whether it is in service
 * (ejected, or backed off after a 429 / 503) and whether it is ready (/readyz). Each worker keeps its
 * own copy of every upstream (struct upstream: connections, timers, calls of that worker's loop), and
 * every copy points to this one record. Owner: worker 0's copy, which creates it (upstream_init with
 * first NULL) and frees it (upstream_free, after every other copy is freed). Any worker writes it,
 * with atomics: a call that fails on any worker counts towards an ejection, and an ejection, a
 * backoff or a passing health check (run by worker 0 only) holds for every worker at once, so
 * /readyz, carpool_upstream_healthy and the choice of an upstream agree whichever worker asks. */
#define UPSTREAM_MAX_COPIES 64
struct upstream_health {
	uint64_t backoff_until;		/* now_us() before which no call is sent (ejected, or told 429) */
	unsigned consecutive_failures;	/* calls in a row that could not connect or broke */
	unsigned ejections;		/* ejections in a row: the backoff doubles */
	uint64_t answered_at;		/* now_us() of its last answer (0: never answered) */
	uint64_t failing_since;		/* now_us() of its first failure since then (0: none) */
	uint64_t failed_at;		/* now_us() of its last failure (0: none) */
	struct upstream *copies[UPSTREAM_MAX_COPIES]; /* every worker's copy, woken when it is back */
	int ncopies;
};

struct upstream {
	int index;
	struct upstream_health *health; /* shared by every worker's copy (above) */
	bool owns_health;		/* worker 0's copy */
	struct event_base *base;
	struct evdns_base *dns;
	const struct cfg_upstream *cfg;
	const struct config *root;
	bool https;
	char host[300];
	int port;
	char prefix[256];	/* path prefix without a trailing slash */
	char host_header[300];
	void *ssl_ctx;		/* SSL_CTX, https only */
	char *auth;		/* "Bearer <key>" from api_key_env, or NULL: pass-through */
	enum dialect dialect;	/* as configured, or detected when configured auto (auto until then: openai) */
	bool detected;
	struct event *probe_ev;		/* the next GET /v1/models: detection, or whether it answers again */
	long probe_wait_ms;		/* the wait before the next probe: 1 s doubling to 30 s */
	bool probe_silent;		/* the next waits for an upstream that did not answer */
	bool probing;			/* a probe is out */
	unsigned max_inputs;		/* embeddings inputs per call: the config's, or less if /info says so */
	unsigned inflight;		/* calls open now */
	unsigned seqs;			/* sequences carpool has in flight on it (prompts x n); each frees as it ends */
	/* what the upstream says of its load (signals.c); between polls, carpool's own accounting */
	unsigned learned_cap;		/* sequences it can decode at once, as it told or showed (0: unknown) */
	unsigned sig_others;		/* at the last good poll: its running + waiting sequences not carpool's */
	bool sig_fresh;			/* the last poll answered with figures */
	uint64_t sig_at;		/* now_us() of the last good poll (0: never) */
	struct signals *signals;	/* the poller (NULL: not polling) */
	struct upconn *idle;
	unsigned nidle;
	struct upcall *open_calls;	/* every call not yet freed (so that shutdown frees them all) */
	struct upconn *dying;	/* connections waiting for their deferred free */
	unsigned long calls, errors;
	struct rate_bucket budget;	/* rate_limit_rpm: holds 6 s of calls */
	struct event *wake_ev;		/* re-offers room when a backoff or the budget allows again */
	struct event *health_ev;
	unsigned long retries_in, ejected_total;
	/* connection reuse: calls sent on a pooled connection; pooled connections the server closed
	 * (found closed before reuse, or closed under a call before any answer byte); calls re-sent on
	 * a new connection after that; idle connections carpool closed (keepalive_ms, Keep-Alive) */
	unsigned long conn_reused, conn_server_closed, resent, conn_idle_expired;
	unsigned stream_closes;		/* pooled connections closed by the server after a streamed answer */
	uint64_t no_stream_keep_until;	/* until then, a connection is not kept after a streamed answer */
	unsigned long errors_by[5];	/* failed calls by enum upcall_error */
	struct event *room_ev;	/* fires (deferred) when a call slot frees */
	void (*on_room)(struct upstream *up, void *arg);
	void *room_arg;
};

struct upcall;

/* Sets up the pool; CP_ERROR (logged) if the URL or the TLS setup is bad or api_key_env is unset.
 * first: worker 0's copy of the same upstream, whose health record up shares; NULL for worker 0's
 * copy itself, which creates the record. */
int upstream_init(struct upstream *up, int index, struct event_base *base, struct evdns_base *dns,
		  const struct config *root, const struct cfg_upstream *cfg, struct upstream *first);
/* Frees the pool; worker 0's copy, the health record's owner, must be freed last. */
void upstream_free(struct upstream *up);

/* May a call start now: not backed off, a sequence free, under max_inflight (when set), and within
 * the request budget. When the answer is no because of a backoff or the budget, a timer is armed
 * that calls on_room when the upstream may be asked again. */
bool upstream_room_or_wake(struct upstream *up);
/* Sequences the upstream decodes at once: max_sequences, else what it told or showed; 0: unbounded. */
unsigned upstream_capacity(const struct upstream *up);
/* Sequences on the upstream now: carpool's own, plus others' as of the last fresh signal. */
unsigned upstream_load(const struct upstream *up);
/* Sequences that may start now (UINT_MAX: unbounded). */
unsigned upstream_free_seqs(const struct upstream *up);
/* A call of n sequences starts / n of its sequences ended (the room they free is offered at once). */
void upstream_seqs_take(struct upstream *up, unsigned n);
void upstream_seqs_end(struct upstream *up, unsigned n);
/* Healthy: not ejected (3 calls in a row, on any worker, that failed to connect or broke eject it,
 * with a doubling backoff from 1 s to 30 s; a success or a good health check restores it) and not
 * backed off. The same answer on every worker (struct upstream_health). */
bool upstream_healthy(const struct upstream *up);
/* now_us() before which no call is sent to up (0 or past: none). */
uint64_t upstream_backoff_until(const struct upstream *up);
/* Ready: it has answered (any call with a response under 500, on any worker, or a passing health
 * check) and has not been failing since for upstream_ready_grace_ms. The same on every worker. */
bool upstream_ready(const struct upstream *up);
/* How long an upstream that answered before must fail before it is not ready: 5 s, or three health
 * checks when they are slower. */
long upstream_ready_grace_ms(const struct upstream *up);
/* How upstream_pick() weighs the candidates. Both rank by load per unit of weight; they differ on
 * purpose in what load is and in who is left out:
 * - UPSTREAM_PICK_ROOM (batched calls): only upstreams with room now (upstream_room_or_wake), load in
 *   sequences (upstream_load: what a batched call takes); those in `avoid` (they failed this batch)
 *   only when no other has room.
 * - UPSTREAM_PICK_CALLS (pass-through, one call each): every candidate, load in calls open, an
 *   unhealthy one only when every candidate is unhealthy (a request is never refused for it). */
enum upstream_pick_by { UPSTREAM_PICK_ROOM, UPSTREAM_PICK_CALLS };
/* The least loaded of ups[i] for each bit i of cands, by the rule `by`; the first on a tie. NULL when
 * there is none (PICK_ROOM: none has room now). */
struct upstream *upstream_pick(struct upstream *ups, int nups, unsigned cands, unsigned avoid, enum upstream_pick_by by);
/* Stops sending to up for ms (an upstream 429 / 503 with Retry-After). */
void upstream_backoff(struct upstream *up, long ms);
/* Asks GET /info for text-embeddings-inference's max_client_batch_size (asynchronous). */
void upstream_probe_info(struct upstream *up);
/* Starts the periodic active health check, when health_path is set. */
void upstream_start_health(struct upstream *up);
/* Detects the dialect with GET /v1/models when it is configured auto (asynchronous); until a probe
 * is answered it tries again after 1 s, doubling to 30 s. Any upstream is probed so after a failure
 * or an ejection (auto: detected again), and at start when nothing else would show that it answers
 * (no health_path, no load polls): readiness needs an answer. */
void upstream_probe(struct upstream *up);

/* Starts one HTTP call. path is appended to the URL's prefix. hdrs (may be NULL) are "Name: value"
 * pairs to forward; client_auth is used only when the upstream has no credential of its own.
 * Returns NULL (after logging) if the call cannot even start. A call on a pooled connection that the
 * server closes before any answer byte is sent again on a new connection, unseen by the owner and not
 * counted as a failure (RFC 9112 §9.3); the owner sees a failure only of a new connection. */
struct upcall *upstream_call(struct upstream *up, const char *method, const char *path,
			     const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
			     size_t len, const struct upcall_ops *ops, void *arg);
/* A GET of carpool's own (the load signals): it takes no call slot and no request of the budget. */
struct upcall *upstream_side_get(struct upstream *up, const char *path, const struct upcall_ops *ops, void *arg);
/* Abandons a call: no callback is made after this; its connection is closed. */
void upcall_cancel(struct upcall *c);

const char *upcall_error_name(enum upcall_error e);

#endif
