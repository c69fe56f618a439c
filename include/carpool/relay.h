/* relay: one batch queue for all workers (batching.queue: shared).
 *
 * Worker 0, the dispatcher, runs the batcher for every worker. Another worker hands each validated
 * request over to it; the dispatcher gives the batcher a stand-in sink (sink.h), and whatever the batcher
 * writes to the stand-in (head, events, end, a whole reply) travels back to the worker that holds the
 * client connection, which applies it there. A client that leaves travels the other way. Messages
 * between two workers are gathered for a whole loop turn and handed over with one lock and one
 * wake-up (event_active), so that every libevent object stays with its own loop's thread. */
#ifndef CARPOOL_RELAY_H
#define CARPOOL_RELAY_H

#include "carpool/common.h"

struct event_base;
struct sink;
struct intake_req;
struct batcher;
struct relay;

/* A relay for worker id on base. */
struct relay *relay_new(struct event_base *base, int id);
/* Tells r every worker's relay (all[0] is the dispatcher's) and, on the dispatcher, its batcher. */
void relay_link(struct relay *r, struct relay *const *all, int n, struct batcher *bt);
/* Hands a validated request to the dispatcher's batcher (like batcher_submit / batcher_submit_embed):
 * req's contents move (req is left empty); auth is copied. The answer comes back to client. */
void relay_submit(struct relay *r, struct sink *client, struct intake_req *req, unsigned cands, const char *auth,
		  bool embed);
/* Requests this worker handed over that have not ended, plus, on the dispatcher, stand-ins alive. */
unsigned relay_open_count(const struct relay *r);
/* Hands over what this loop turn gathered now (a worker about to leave its loop). */
void relay_flush(struct relay *r);
/* Frees r, what it still holds and what waits in its inbox. After the worker's server and batcher. */
void relay_free(struct relay *r);

#endif
