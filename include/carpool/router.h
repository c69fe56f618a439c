/* router: what each client request becomes - batched completion, local endpoint, or a
 * pass-through to the upstream - plus client-key checks. */
#ifndef CARPOOL_ROUTER_H
#define CARPOOL_ROUTER_H

#include "carpool/config.h"

struct creq;
struct batcher;
struct upstream;

struct router {
	const struct config *cfg;
	struct upstream *ups;
	int nups;
	struct batcher *bt;
	struct relay *relay;	  /* set when batches form on worker 0 for every worker (batching.queue: shared) */
	struct auth_table **auth; /* client keys, shared by the workers; NULL or empty: no check */
	struct metrics *metrics;  /* this worker's (never NULL) */
	struct router **peers;	  /* every worker's router, for /metrics totals (this one included) */
	int npeers;
};

/* The server's request handler; arg is a struct router. */
void router_handle(struct creq *r, void *arg);
/* The server's head check: the client key is checked (and the request admitted under its limits) as
 * soon as the head is read, so that a refused client sends no body. */
bool router_head(struct creq *r, void *arg);

/* The upstreams serving model (bit i: upstream i); a "*" upstream serves every model. */
unsigned router_candidates(struct router *rt, const char *model);
/* The least-loaded healthy upstream serving model; NULL if none does. */
struct upstream *router_pick(struct router *rt, const char *model);

#endif
