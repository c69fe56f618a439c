/* batcher: open batches of compatible requests per batch key, window timers, the queue of batches
 * waiting for room, and the dispatch policy: when a batch goes and to which upstream. The call
 * itself is call.c's; the batch and member types are batch.h's. */
#ifndef CARPOOL_BATCHER_H
#define CARPOOL_BATCHER_H

#include "carpool/batch.h" /* struct batcher_stats */
#include "carpool/common.h"
#include "carpool/config.h"
#include "carpool/intake.h"

struct event_base;
struct sink;
struct upstream;
struct batcher;

struct batcher *batcher_new(struct event_base *base, const struct config *cfg, struct upstream *ups, int nups);
void batcher_free(struct batcher *bt);

/* Takes a validated completion request: r's contents move into the batcher (r is left empty).
 * cands: the upstreams that may serve it (bit i: upstream i); the least loaded one with room gets each
 * call, another one a retry. auth is the client's Authorization header when it is forwarded (part of the batch key), or NULL.
 * The batcher answers client (sink.h), now or later. */
void batcher_submit(struct batcher *bt, struct sink *client, struct intake_req *r, unsigned cands, const char *auth);

/* The same for a validated /v1/embeddings request: its inputs are split into parts of at most the
 * upstream's max_inputs_per_call, batched with other clients' inputs, and reassembled in order. */
void batcher_submit_embed(struct batcher *bt, struct sink *client, struct intake_req *r, unsigned cands,
			  const char *auth);

struct metrics;
/* Where the batcher records queue times, prompts per call and tokens streamed. */
void batcher_set_metrics(struct batcher *bt, struct metrics *m);

/* A copy of bt's counters (read without a lock when another worker asks: the figures may be a
 * moment old, never written by the reader). */
struct batcher_stats batcher_stats(const struct batcher *bt);
/* Requests not yet answered (queued or streaming). */
unsigned batcher_active(const struct batcher *bt);

#endif
