/* batch: the types of batching - a client request in a batch (struct member), a batch of compatible
 * requests bound for one upstream call (struct batch), what the batches of one batcher share (struct
 * batch_home) - and their lifecycle: created, filled, compacted, answered with an error, freed.
 *
 * Who does what with them: batcher.c keeps them in its key map and queue and decides when and where
 * one goes; call.c sends one and splits its answer; a batch goes back to the batcher's queue (a
 * retry, a bisected half) through home->requeue, and leaves it through home->forget when freed. */
#ifndef CARPOOL_BATCH_H
#define CARPOOL_BATCH_H

#include "carpool/common.h"
#include "carpool/config.h"
#include "carpool/embed.h"
#include "carpool/intake.h"
#include "carpool/splitter.h"
#include "carpool/sse.h"

/* Sends of one batch at most: the first and two retries. */
#define BATCH_MAX_ATTEMPTS 3
/* The longest carpool holds a batch for an upstream to come back (out of its backoff). */
#define BATCH_MAX_HOLD_MS 2000

struct event;
struct event_base;
struct metrics;
struct sink;
struct upcall;
struct upstream;
struct batch;

/* The batcher's counters (batcher_stats() hands out a copy). */
struct batcher_stats {
	unsigned long requests;	      /* client completion requests accepted into a batch */
	unsigned long prompts;	      /* prompts they carried */
	unsigned long calls;	      /* batched upstream calls sent (bisections and retries included) */
	unsigned long call_prompts;   /* prompts sent in those calls */
	unsigned long bisections;
	unsigned long retries;
	unsigned long upstream_errors;
	unsigned long gone;	      /* clients that left before their answer ended */
	unsigned long active;	      /* requests not yet answered: queued or streaming */
	unsigned long max_call_prompts;
};

/* What the batches of one batcher share: its loop and config, its counters, every live batch, and
 * the two hooks back into its queue. */
struct batch_home {
	struct event_base *base;
	const struct config *cfg;
	struct metrics *metrics; /* NULL: none */
	struct batcher_stats st;
	unsigned active;	 /* requests not yet answered: queued or streaming */
	uint64_t next_id;
	struct batch *all;	 /* every live batch, so that shutdown frees them */
	/* b (not sent, members alive) may go again, before new work: a retry, a bisected half, the
	 * members moved off a broken call */
	void (*requeue)(struct batch *b);
	/* b is being freed: the batcher drops it from its key map and its queue */
	void (*forget)(struct batch *b);
};

/* An embeddings client request; its inputs travel as one or more parts (members), each at most the
 * upstream's max_inputs_per_call, and are reassembled in order (embed.h). */
struct member_parent {
	struct batch_home *home;
	struct sink *client; /* NULL once answered or gone */
	unsigned refs;	     /* parts (members) not freed */
	struct embed_whole w;
};

/* One client request in a batch (or one part of an embeddings request). Owned by its batch
 * (sm.batch), or by the batcher while it has none. */
struct member {
	struct split_member sm;
	struct batch_home *home;
	struct sink *client;	/* NULL once the client left or was answered (parts: the parent's) */
	struct intake_req req;
	unsigned *ptok_est;	/* per prompt: estimated tokens */
	uint64_t t_arrival;
	bool answered;
	bool head_sent;
	struct member_parent *parent; /* embeddings: the client request this part belongs to */
	unsigned offset;	     /* embeddings: index of this part's first input in the parent */
	bool part_done;
	bool wrote;		     /* stream: bytes of the answer reached the client */
};

struct batch {
	uint64_t id;
	struct batch_home *home;
	struct upstream *up;	/* chosen when the batch is sent */
	unsigned cands;		/* upstreams that may serve it (bit i: upstream i) */
	char *auth;		/* the client credential forwarded upstream (part of the key), or NULL */
	unsigned long est_tokens; /* estimated input tokens (embeddings' per-call token limit) */
	unsigned tried;		/* upstreams that failed it before any byte reached a client */
	char *key;
	struct member **members;
	unsigned nmembers, cap;
	unsigned nprompts;
	bool embed;
	int attempt;
	struct event *timer;	/* the window (batcher), then the wait before a retry (call) */
	struct event *ka_timer;	/* SSE keep-alive comments until the first upstream event */
	bool first_event;
	/* the batcher's: its key map, its queue */
	bool in_map, in_queue, sent;
	struct batch *hnext;	/* hash chain */
	struct batch *qnext;	/* wait queue */
	struct batch *anext, *aprev; /* home->all */
	/* once sent (call.c) */
	struct upcall *call;
	int status;
	bool split_ready;
	struct split sp;
	struct split_member **sms;
	struct sse_parser sse;
	struct sbuf answer_body; /* an answer kept whole, not split: an embeddings answer, or an error's body */
	char retry_after[32];
	char content_type[128];
	uint64_t t_sent;
	unsigned seqs_held;	/* sequences taken on up when sent (prompts x n) */
	unsigned seqs_ended;	/* of which ended (finish_reason seen) and given back */
	bool unusable;		/* a 200 that is no event stream: its body is never kept or forwarded */
};

/* A new empty batch of key (copied), in home->all. */
struct batch *batch_new(struct batch_home *home, unsigned cands, const char *key);
/* A new empty batch for members moved out of b: b's key, candidates, credential and kind. */
struct batch *batch_new_like(const struct batch *b);
/* Appends m; b owns it from now. */
void batch_add(struct batch *b, struct member *m);
/* Frees members whose client left while queued, and closes up the array. */
void batch_compact(struct batch *b);
/* Members whose client (or embeddings parent) is still there. */
unsigned batch_alive_members(const struct batch *b);
/* Every member still waiting gets this error (member_reply_error). */
void batch_reply_error(struct batch *b, int status, const char *msg, const char *type, const char *extra);
/* Gives back to the upstream the sequences of b's call that have not ended yet (the call is over). */
void batch_release_seqs(struct batch *b);
/* Starts SSE keep-alive comments for b's streaming clients until the upstream's first event. */
void batch_keepalive(struct batch *b);
/* Frees b and every member (forgotten by the batcher first, its call cancelled); members whose
 * answer has not ended get a 502, or their stream ended. */
void batch_free(struct batch *b);

/* Sequences of a member: its prompts times n. */
unsigned member_seqs(const struct member *m);
/* Its client (or embeddings parent) is still there. */
bool member_alive(const struct member *m);
/* The member's client will hear nothing more from us (answered, or gone). */
void member_detach(struct member *m);
/* An OpenAI error to m's client: a reply, or an error event when its stream has started; an
 * embeddings part fails its whole request (once). */
void member_reply_error(struct member *m, int status, const char *msg, const char *type, const char *extra);
/* An embeddings part failed with this reply: its client gets it (once), the other parts are dropped. */
void member_fail_part(struct member *m, int status, const char *ctype, const char *extra, const char *body,
		      size_t len);
void member_free(struct member *m);
/* The gone callbacks (sink_on_gone) of a member's client and of an embeddings parent's client. */
void member_gone_cb(void *arg);
void member_parent_gone_cb(void *arg);

#endif
