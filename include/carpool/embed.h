/* embed: an embeddings request split into parts, and its parts' answers put back together. Pure: JSON
 * in, JSON out; no I/O (the batcher sends the parts and writes the reply).
 *
 * A client's inputs travel as one or more parts, each at most an upstream's max_inputs_per_call
 * inputs (and max_tokens_per_call estimated tokens), batched with other clients' inputs. Each
 * upstream answer is split back by data[].index into the wholes its parts belong to, and the call's
 * usage is shared among them in proportion to their estimated tokens. */
#ifndef CARPOOL_EMBED_H
#define CARPOOL_EMBED_H

#include "carpool/common.h"

#include <cjson/cJSON.h>

/* One client's embeddings request while its parts are out. */
struct embed_whole {
	unsigned ninputs;
	unsigned parts_left; /* parts whose answer has not come */
	cJSON **items;	     /* per input: its data[] element, index renumbered; NULL until it comes */
	long prompt_tokens;  /* the shares of usage its parts got */
	bool exact;	     /* usage exact: every part was alone in its call */
	bool failed;	     /* a part failed: the client got that error; the rest is dropped */
	cJSON *proto;	     /* top-level fields of an upstream answer, without data and usage */
	uint64_t batch_id;   /* the last call that answered a part, and its size, for the reply's headers */
	unsigned batch_size;
};

/* One part of a whole, as one member of an upstream call. */
struct embed_part {
	struct embed_whole *whole;
	unsigned offset;	 /* index of its first input in the whole */
	unsigned ninputs;
	const unsigned *tok_est; /* per input: estimated tokens (the weights of the usage shares) */
};

/* Where the parts of n inputs start, in order: runs of at most limit inputs and tok_limit estimated
 * tokens (est[k] each); an input over tok_limit goes alone and the upstream decides. starts needs
 * room for n + 1; starts[nparts] = n. Returns nparts (n >= 1, limit >= 1). */
unsigned embed_plan(const unsigned *est, unsigned n, unsigned limit, unsigned long tok_limit, unsigned *starts);

void embed_whole_init(struct embed_whole *w, unsigned ninputs, unsigned nparts);
/* Frees what w holds (w itself is the caller's). */
void embed_whole_release(struct embed_whole *w);

/* The body of an upstream's 200 answer to one call made of parts[0..nparts) (in call order, their
 * inputs consecutive): each data[] element goes to the whole its index falls in, renumbered there; the
 * call's usage.prompt_tokens is apportioned by estimated tokens; each part counts as answered. A whole
 * that failed takes no elements (its share of usage still counts). CP_ERROR, nothing changed: the
 * body is not JSON with a data[] of one element per input. */
int embed_take_answer(const char *body, size_t len, struct embed_part *const *parts, unsigned nparts,
		      uint64_t batch_id);

/* The client's reply body once every part is in: the answer's fields, data[] in input order (null
 * for an input the upstream left out), and its usage. The items move into the reply. Caller frees. */
char *embed_reply_body(struct embed_whole *w);

/* Largest-remainder shares of total in proportion to weights: they add up to total exactly (all to
 * the first when the weights add up to nothing). */
void embed_apportion(long total, const long *weights, long *out, unsigned n);

#endif
