/* splitter: routes the choices of one batched upstream stream to the clients that own them,
 * rewrites `index`, and assembles each client's SSE stream or JSON body. Pure: events in, bytes
 * out (each member's `out` buffer); the caller does the I/O.
 *
 * Index mapping (README contract 3): a member with k prompts and n choices each owns prompt slots
 * [slot0, slot0+k); upstream choice index i = p*n + j maps to client index (p - slot0)*n + j. */
#ifndef CARPOOL_SPLITTER_H
#define CARPOOL_SPLITTER_H

#include "carpool/common.h"
#include "carpool/config.h"

#include <cjson/cJSON.h>

struct batch;

struct split_member {
	/* set by the caller before split_init */
	unsigned nprompts;
	bool stream;
	bool include_usage;
	unsigned *prompt_tokens_est; /* per prompt: estimated prompt tokens (owned by the caller) */
	struct batch *batch;	     /* the batcher's, holding this member (the splitter never uses it) */

	/* state, owned by the splitter */
	unsigned slot0;
	unsigned nchoices;
	unsigned finished;
	bool done;	   /* complete: `out` holds the last bytes this member will get */
	bool gone;	   /* the client left: produce nothing more */
	bool dirty;	   /* `out` has bytes the caller has not taken yet */
	int status;	   /* non-stream: HTTP status of the body in `out` (200 or an error) */
	bool usage_exact;  /* the usage this member was told is exact, not estimated */
	struct sbuf out;
	unsigned char *fin;	  /* per client choice: finished */
	unsigned long *ntokens;	  /* per client choice: content chunks seen */
	long *cu_completion;	  /* per client choice: vLLM continuous usage, -1 unknown */
	long *cu_prompt;	  /* per prompt: exact prompt tokens, -1 unknown */
	struct sbuf *text;	  /* non-stream: per client choice, accumulated text */
	cJSON **last;		  /* non-stream: per client choice, last choice object (text removed) */
	cJSON **logprobs;	  /* non-stream: per client choice, merged logprobs */
	cJSON **final;		  /* llamacpp non-stream: per prompt, its final chunk */
};

struct split {
	enum dialect dialect;
	unsigned n;		/* choices per prompt, shared by the batch */
	struct split_member **members;
	unsigned nmembers;
	unsigned nslots;
	unsigned *slot_owner;	/* prompt slot -> member */
	cJSON *proto;		/* top-level fields of the first event, without choices and usage; parsed
				 * from proto_src when first needed */
	struct sbuf proto_src;	/* the bytes of the first event with a choices array */
	struct sbuf tpl;	/* the event template: the bytes of an event up to its first choice's '{',
				 * learned from an event the byte path scanned in full; the same for every
				 * event of a call (id, object, created, model) */
	cJSON *usage_total;	/* the upstream's whole-call usage, when it sent one */
	bool upstream_done;	/* [DONE] seen */
	unsigned remaining;	/* members not done */
	unsigned finished;	/* choices that ended, over every member (the sum of their `finished`) */
	unsigned long events;
	unsigned long fast_events; /* events handled by the byte-level fast path */
	struct split_skel *skel;   /* the layout of the rest of the event (splitter.c), or NULL */
	unsigned long tpl_events;  /* of which matched the template (scanned from the first choice on) */
	unsigned long skel_events; /* of which matched the whole layout (nothing scanned but its values) */
	bool no_fast;		/* tests: always take the full-parse path */
	bool no_tpl;		/* tests: the byte path never uses the template (nor the layout) */
	bool no_skel;		/* tests: the byte path never uses the layout */
};

/* Lays out slots in member order. members[] stays owned by the caller; dialect must be resolved. */
void split_init(struct split *sp, enum dialect dialect, unsigned n, struct split_member **members,
		unsigned nmembers);
void split_free(struct split *sp);

/* Whether a member alone in its call gets the upstream's own usage (exact) - decided at start. */
bool split_usage_exact(const struct split *sp);

/* One SSE event of the upstream stream. Returns CP_OK, or CP_ERROR for an event that is not
 * understood (the caller fails the call). */
int split_event(struct split *sp, const char *data, size_t len, bool is_error_field);

/* The upstream stream ended (cleanly or not): every member not done is ended. With an error
 * message, streaming members get an SSE error event and non-streaming ones an error body. */
void split_end(struct split *sp, int status, const char *message);

/* The client of member m left: it gets nothing more. */
void split_member_gone(struct split *sp, struct split_member *m);

void split_member_free(struct split_member *m);

#endif
