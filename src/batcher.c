/* batcher: batch keys, windows, the queue, and the dispatch policy. */
#include "carpool/batcher.h"
#include "carpool/call.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBUCKETS 1024

struct batcher {
	struct batch_home home; /* loop, config, counters, every batch, the hooks */
	struct upstream *ups;
	int nups;
	struct batch *buckets[NBUCKETS];
	struct batch *qhead, *qtail; /* batches ready, waiting for an upstream with room */
	uint64_t last_arrival;	/* now_us() of the last request */
	uint64_t gap_ewma;	/* average gap between requests, us (recent ones weigh most) */
};

static struct batcher *batcher_of(const struct batch *b)
{
	return (struct batcher *)((char *)b->home - offsetof(struct batcher, home));
}

void batcher_set_metrics(struct batcher *bt, struct metrics *m) { bt->home.metrics = m; }

static void batch_ready(struct batch *b);

/* --- key map ------------------------------------------------------------------------------ */

static unsigned bucket_of(const char *key)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)key; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % NBUCKETS;
}

static struct batch *map_find(struct batcher *bt, const char *key)
{
	for (struct batch *b = bt->buckets[bucket_of(key)]; b; b = b->hnext)
		if (!strcmp(b->key, key))
			return b;
	return NULL;
}

static void map_remove(struct batch *b)
{
	if (!b->in_map)
		return;
	struct batch **pp = &batcher_of(b)->buckets[bucket_of(b->key)];
	while (*pp && *pp != b)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = b->hnext;
	b->hnext = NULL;
	b->in_map = false;
}

static void queue_remove(struct batch *b)
{
	if (!b->in_queue)
		return;
	struct batcher *bt = batcher_of(b);
	struct batch **pp = &bt->qhead, *prev = NULL;
	while (*pp && *pp != b) {
		prev = *pp;
		pp = &(*pp)->qnext;
	}
	if (*pp) {
		*pp = b->qnext;
		if (bt->qtail == b)
			bt->qtail = prev;
	}
	b->qnext = NULL;
	b->in_queue = false;
}

/* The batch is being freed (home->forget). */
static void forget(struct batch *b)
{
	map_remove(b);
	queue_remove(b);
}

/* --- dispatch ------------------------------------------------------------------------------ */

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct batch *b = arg;
	if (b->sent)
		return;
	batch_ready(b);
}

/* The least-loaded candidate upstream with room, preferring upstreams that have not already failed
 * this batch; NULL if none has room now. */
static struct upstream *choose(struct batch *b)
{
	return upstream_pick(batcher_of(b)->ups, batcher_of(b)->nups, b->cands, b->tried, UPSTREAM_PICK_ROOM);
}

/* How long until some candidate is out of backoff (0: one is in service now). */
static long soonest_ms(struct batch *b)
{
	struct batcher *bt = batcher_of(b);
	uint64_t now = now_us();
	long best = -1;
	for (int i = 0; i < bt->nups; i++) {
		if (!(b->cands & (1u << i)))
			continue;
		uint64_t until = upstream_backoff_until(&bt->ups[i]);
		long ms = until > now ? (long)((until - now) / 1000) : 0;
		if (best < 0 || ms < best)
			best = ms;
	}
	return best < 0 ? 0 : best;
}

/* No candidate will be in service soon: answer now rather than hold the clients (like nginx's
 * "no live upstreams"). Returns true if b was failed and freed. */
static bool fail_if_none_live(struct batch *b)
{
	long ms = soonest_ms(b);
	if (ms <= BATCH_MAX_HOLD_MS)
		return false;
	char extra[48];
	snprintf(extra, sizeof extra, "Retry-After: %ld\r\n", (ms + 999) / 1000);
	log_warn("batch %llu: no upstream in service for %ld ms; answering 503", (unsigned long long)b->id, ms);
	batch_reply_error(b, 503, "No upstream is available right now; retry later.", "server_error", extra);
	batch_free(b);
	return true;
}

/* Moves b's leading members, as many as fit in room sequences (at least one when one_anyway), into
 * a new batch of the same key, which the caller sends; b keeps the rest and its place. NULL: none
 * fits; b itself: all of it goes. */
static struct batch *batch_take_front(struct batch *b, unsigned room, bool one_anyway)
{
	unsigned k = 0, seqs = 0;
	while (k < b->nmembers && seqs + member_seqs(b->members[k]) <= room)
		seqs += member_seqs(b->members[k++]);
	if (!k && one_anyway)
		k = 1;
	if (!k)
		return NULL;
	if (k == b->nmembers)
		return b;
	struct batch *nb = batch_new_like(b);
	nb->attempt = b->attempt;
	nb->tried = b->tried;
	for (unsigned i = 0; i < k; i++) {
		b->members[i]->sm.batch = nb;
		batch_add(nb, b->members[i]);
	}
	memmove(b->members, b->members + k, (b->nmembers - k) * sizeof *b->members);
	b->nmembers -= k;
	b->nprompts -= nb->nprompts;
	if (b->ka_timer)
		batch_keepalive(nb);
	return nb;
}

/* Sends b to up: out of the key map and the queue, its window closed, and the call owns it. */
static void send_to(struct batch *b, struct upstream *up)
{
	map_remove(b);
	queue_remove(b);
	if (b->timer)
		evtimer_del(b->timer);
	b->up = up;
	call_send(b);
}

/* Sends b, or the part of it that fits in the sequences free on up (packed into what freed), or
 * fails it when no upstream is live (up NULL). true: b is done with; false: b, or what is left of
 * it, must wait for room. */
static bool dispatch(struct batch *b, struct upstream *up)
{
	if (!up)
		return fail_if_none_live(b);
	unsigned room = upstream_free_seqs(up);
	unsigned need = 0;
	for (unsigned i = 0; i < b->nmembers && need <= room; i++)
		if (member_alive(b->members[i]))
			need += member_seqs(b->members[i]);
	if (b->embed || need <= room) {
		send_to(b, up);
		return true;
	}
	batch_compact(b);
	/* a request larger than the whole capacity still goes, once carpool has nothing else there */
	struct batch *front = batch_take_front(b, room, up->seqs == 0);
	if (!front)
		return false;
	send_to(front, up);
	return front == b;
}

/* The batch may go: now if an upstream has room (and nobody queued before it), else it waits in
 * the queue - still open to new members until it is full. */
static void batch_ready(struct batch *b)
{
	struct batcher *bt = batcher_of(b);
	if (b->in_queue || b->sent)
		return;
	if (bt->qhead ? fail_if_none_live(b) : dispatch(b, choose(b)))
		return;
	b->in_queue = true;
	b->qnext = NULL;
	if (bt->qtail)
		bt->qtail->qnext = b;
	else
		bt->qhead = b;
	bt->qtail = b;
}

/* Puts b first in the queue (bisections and retries go before new work). */
static void batch_ready_first(struct batch *b)
{
	struct batcher *bt = batcher_of(b);
	if (dispatch(b, choose(b)))
		return;
	b->in_queue = true;
	b->qnext = bt->qhead;
	bt->qhead = b;
	if (!bt->qtail)
		bt->qtail = b;
}

/* An upstream has room again (a sequence or call ended, a budget refilled, a backoff ended): send
 * what waits, oldest first, packed into the room that freed. */
static void on_room(struct upstream *up, void *arg)
{
	(void)up;
	struct batcher *bt = arg;
	struct batch *b = bt->qhead;
	while (b) {
		struct batch *next = b->qnext;
		struct upstream *to = choose(b);
		if (to) {
			dispatch(b, to);
		} else if (soonest_ms(b) > BATCH_MAX_HOLD_MS) {
			queue_remove(b);
			fail_if_none_live(b);
		}
		b = next;
	}
}


/* --- submission ------------------------------------------------------------------------------- */

static bool over_queue_limit(struct batcher *bt, struct sink *client, struct intake_req *r)
{
	if (bt->home.active < (unsigned)bt->home.cfg->limits.max_queue)
		return false;
	static const char body[] = "{\"error\":{\"message\":\"carpool is at its queue limit; retry shortly.\","
				   "\"type\":\"server_error\",\"param\":null,\"code\":\"overloaded\"}}";
	sink_reply(client, 503, "application/json", "Retry-After: 1\r\n", body, sizeof body - 1);
	intake_free(r);
	return true;
}

static unsigned *estimate_tokens(const cJSON *prompts, unsigned n)
{
	unsigned *est = xcalloc(n, sizeof *est);
	unsigned i = 0;
	for (const cJSON *p = prompts->child; p && i < n; p = p->next, i++) {
		if (cJSON_IsString(p)) {
			size_t len = strlen(p->valuestring);
			est[i] = len ? (unsigned)((len + 3) / 4) : 1;
		} else {
			est[i] = (unsigned)cJSON_GetArraySize(p);
		}
	}
	return est;
}

/* Puts member m into the open batch of its key (or a new one), up to cap prompts per batch. */
static unsigned long member_tokens(const struct member *m)
{
	unsigned long t = 0;
	for (unsigned k = 0; k < m->req.nprompts; k++)
		t += m->ptok_est[k];
	return t;
}

/* Light load: a companion is not likely within the window - the recent gaps between requests are
 * longer than max_wait_ms, or no other request is in carpool. */
static bool light_load(const struct batcher *bt)
{
	return bt->home.active <= 1 || bt->gap_ewma > (uint64_t)bt->home.cfg->batching.max_wait_ms * 1000u;
}

/* Notes a request's arrival in the average gap (each gap counted up to twice the window, so that
 * a burst after a quiet spell is seen within a few requests). */
static void note_arrival(struct batcher *bt)
{
	uint64_t now = now_us(), cap = (uint64_t)bt->home.cfg->batching.max_wait_ms * 2000u;
	uint64_t gap = bt->last_arrival ? now - bt->last_arrival : cap;
	if (gap > cap)
		gap = cap;
	bt->gap_ewma = bt->last_arrival ? (bt->gap_ewma * 3 + gap) / 4 : gap;
	bt->last_arrival = now;
}

/* tok_cap: a limit on the batch's estimated input tokens (0: none). */
static void place(struct batcher *bt, struct member *m, unsigned cands, const char *auth, unsigned cap,
		  unsigned long tok_cap)
{
	const struct config *cfg = bt->home.cfg;
	struct sbuf key = {0};
	sbuf_printf(&key, "%x|%s|%s", cands, auth ? auth : "", m->req.key);
	struct batch *b = map_find(bt, key.data);
	unsigned long mt = tok_cap ? member_tokens(m) : 0;
	if (b && (b->nprompts + m->req.nprompts > cap || (tok_cap && b->nmembers && b->est_tokens + mt > tok_cap))) {
		map_remove(b); /* full: it goes (or waits for room) as it is */
		batch_ready(b);
		b = NULL;
	}
	bool fresh = false;
	if (!b) {
		b = batch_new(&bt->home, cands, key.data);
		b->auth = auth ? xstrdup(auth) : NULL;
		b->embed = m->parent != NULL;
		if (!b->embed)
			batch_keepalive(b);
		b->in_map = true;
		unsigned h = bucket_of(b->key);
		b->hnext = bt->buckets[h];
		bt->buckets[h] = b;
		fresh = true;
	}
	sbuf_free(&key);
	m->sm.batch = b;
	batch_add(b, m);
	b->est_tokens += mt;
	if (b->nprompts >= cap || (tok_cap && b->est_tokens >= tok_cap)) {
		map_remove(b);
		if (!b->in_queue) /* full while waiting for room: it goes first when room opens */
			batch_ready(b);
		return;
	}
	if (!fresh)
		return;
	/* adaptive: at light load (no companion likely within the window) or with no room (it waits
	 * in the queue, filling, and goes when sequences free) at once; otherwise the window */
	if (cfg->batching.max_wait_ms == 0 ||
	    (cfg->batching.policy == POLICY_ADAPTIVE && (light_load(bt) || bt->qhead || !choose(b)))) {
		batch_ready(b);
		return;
	}
	b->timer = evtimer_new(bt->home.base, timer_cb, b);
	long ms = cfg->batching.max_wait_ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(b->timer, &tv);
}

void batcher_submit(struct batcher *bt, struct sink *client, struct intake_req *r, unsigned cands, const char *auth)
{
	if (over_queue_limit(bt, client, r))
		return;
	struct member *m = xcalloc(1, sizeof *m);
	m->home = &bt->home;
	m->client = client;
	m->req = *r;
	memset(r, 0, sizeof *r);
	m->t_arrival = now_us();
	m->sm.nprompts = m->req.nprompts;
	m->sm.stream = m->req.stream;
	m->sm.include_usage = m->req.include_usage;
	m->ptok_est = estimate_tokens(m->req.prompts, m->req.nprompts);
	m->sm.prompt_tokens_est = m->ptok_est;
	CNT_ADD(bt->home.active, 1);
	CNT_ADD(bt->home.st.requests, 1);
	CNT_ADD(bt->home.st.prompts, m->req.nprompts);
	note_arrival(bt);
	sink_on_gone(client, member_gone_cb, m);
	place(bt, m, cands, auth, (unsigned)bt->home.cfg->batching.max_batch_size, 0);
}

void batcher_submit_embed(struct batcher *bt, struct sink *client, struct intake_req *r, unsigned cands,
			  const char *auth)
{
	if (over_queue_limit(bt, client, r))
		return;
	/* the smallest limits among the candidates: any of them may get a part */
	unsigned limit = 0;
	unsigned long tok_limit = 0;
	for (int i = 0; i < bt->nups; i++) {
		if (!(cands & (1u << i)))
			continue;
		if (!limit || bt->ups[i].max_inputs < limit)
			limit = bt->ups[i].max_inputs;
		if (!tok_limit || (unsigned long)bt->ups[i].cfg->max_tokens_per_call < tok_limit)
			tok_limit = (unsigned long)bt->ups[i].cfg->max_tokens_per_call;
	}
	unsigned cap = (unsigned)bt->home.cfg->batching.max_batch_size;
	if (cap > limit)
		cap = limit;
	unsigned *est = estimate_tokens(r->prompts, r->nprompts);
	/* parts: at most `limit` inputs and (estimated) `tok_limit` tokens each, in order; an input
	 * larger than the token limit goes alone and the upstream decides */
	unsigned *starts = xcalloc(r->nprompts + 1, sizeof *starts);
	unsigned nparts = embed_plan(est, r->nprompts, limit, tok_limit, starts);
	free(est);
	/* auth points into the client's request, which an early failure of one part frees */
	char *auth_copy = auth ? xstrdup(auth) : NULL;
	struct member_parent *ep = xcalloc(1, sizeof *ep);
	ep->home = &bt->home;
	ep->client = client;
	embed_whole_init(&ep->w, r->nprompts, nparts);
	ep->refs = nparts;
	note_arrival(bt);
	CNT_ADD(bt->home.active, 1);
	CNT_ADD(bt->home.st.requests, 1);
	CNT_ADD(bt->home.st.prompts, r->nprompts);
	sink_on_gone(client, member_parent_gone_cb, ep);
	cJSON *inputs = r->prompts;
	for (unsigned pi = 0; pi < nparts; pi++) {
		struct member *m = xcalloc(1, sizeof *m);
		m->home = &bt->home;
		m->parent = ep;
		m->offset = starts[pi];
		m->t_arrival = now_us();
		m->req.body = pi + 1 == nparts ? r->body : cJSON_Duplicate(r->body, 1);
		m->req.key = pi + 1 == nparts ? r->key : xstrdup(r->key);
		m->req.kind = r->kind;
		m->req.n = 1;
		m->req.prompts = cJSON_CreateArray();
		for (unsigned k = starts[pi]; k < starts[pi + 1] && inputs->child; k++) {
			cJSON_AddItemToArray(m->req.prompts, cJSON_DetachItemViaPointer(inputs, inputs->child));
			m->req.nprompts++;
		}
		m->ptok_est = estimate_tokens(m->req.prompts, m->req.nprompts);
		/* a part larger than the packing cap goes alone, whole */
		place(bt, m, cands, auth_copy, m->req.nprompts > cap ? m->req.nprompts : cap, tok_limit);
	}
	free(auth_copy);
	free(starts);
	cJSON_Delete(r->prompts);
	memset(r, 0, sizeof *r);
}

struct batcher *batcher_new(struct event_base *base, const struct config *cfg, struct upstream *ups, int nups)
{
	struct batcher *bt = xcalloc(1, sizeof *bt);
	bt->home.base = base;
	bt->home.cfg = cfg;
	bt->home.requeue = batch_ready_first;
	bt->home.forget = forget;
	bt->ups = ups;
	bt->nups = nups;
	for (int i = 0; i < nups; i++) {
		ups[i].on_room = on_room;
		ups[i].room_arg = bt;
	}
	return bt;
}

void batcher_free(struct batcher *bt)
{
	if (!bt)
		return;
	while (bt->home.all) /* queued, open, in flight or waiting to retry */
		batch_free(bt->home.all);
	free(bt);
}

struct batcher_stats batcher_stats(const struct batcher *bt)
{
	/* /metrics may ask from another worker's thread */
	struct batcher_stats st = {
		.requests = CNT_GET(bt->home.st.requests),
		.prompts = CNT_GET(bt->home.st.prompts),
		.calls = CNT_GET(bt->home.st.calls),
		.call_prompts = CNT_GET(bt->home.st.call_prompts),
		.bisections = CNT_GET(bt->home.st.bisections),
		.retries = CNT_GET(bt->home.st.retries),
		.upstream_errors = CNT_GET(bt->home.st.upstream_errors),
		.gone = CNT_GET(bt->home.st.gone),
		.active = CNT_GET(bt->home.active),
		.max_call_prompts = CNT_GET(bt->home.st.max_call_prompts),
	};
	return st;
}

unsigned batcher_active(const struct batcher *bt) { return bt->home.active; }
