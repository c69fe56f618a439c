/* call: one batched upstream call on the wire. It builds the body from the batch's members, sends
 * it, and splits the streamed answer back to them (splitter.c; embeddings: embed.c) as it comes.
 * When the call fails before any byte reached a client it is retried (contract 11) or bisected to
 * find the member at fault (contract 6); members to whom nothing was written move off a call that
 * broke mid-stream. Each of those goes back to the batcher's queue through batch->home->requeue. */
#ifndef CARPOOL_CALL_H
#define CARPOOL_CALL_H

#include "carpool/batch.h"

/* Sends b to b->up (chosen by the caller, out of the batcher's map and queue): members whose client
 * left are dropped first, the sequences are taken on the upstream. The call owns b from now: it frees
 * it when the answer is over (or hands it back through home->requeue). An empty b is freed at once;
 * a call that cannot start answers every member 502. */
void call_send(struct batch *b);

#endif
