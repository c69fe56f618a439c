/* batcher: batch keys, windows, dispatch, and the life of one batched upstream call. */
#include "carpool/batcher.h"
#include "carpool/embed.h"
#include "carpool/metrics.h"
#include "carpool/reqbody.h"
#include "carpool/sink.h"
#include "carpool/splitter.h"
#include "carpool/sse.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NBUCKETS 1024
#define MAX_ERROR_BODY 65536
#define MAX_SSE_EVENT (4u << 20)
#define RETRY_BACKOFF_MS 100
#define MAX_ATTEMPTS 3 /* sends of one batch: the first and two retries */
#define MAX_HOLD_MS 2000 /* longest carpool holds a batch for an upstream to come back (backoff) */
#define MAX_EMBED_BODY (256u << 20)

struct batch;

/* One client request in a batch. Owned by its batch (or by the batcher while it has none). */
struct member {
	struct split_member sm;
	struct batcher *bt;
	struct sink *client;	/* NULL once the client left or was answered */
	struct intake_req req;
	unsigned *ptok_est;
	uint64_t t_arrival;
	bool answered;
	bool head_sent;
	struct embed_parent *parent; /* embeddings: the client request this part belongs to */
	unsigned offset;	     /* embeddings: index of this part's first input in the parent */
	bool part_done;
	bool wrote;		     /* stream: bytes of the answer reached the client */
};

/* An embeddings client request; its inputs travel as one or more parts (members), each at most
 * the upstream's max_inputs_per_call, and are reassembled in order. */
struct embed_parent {
	struct batcher *bt;
	struct sink *client; /* NULL once answered or gone */
	unsigned refs;	     /* parts (members) alive */
	struct embed_whole w;
};

struct batch {
	uint64_t id;
	struct batcher *bt;
	struct upstream *up;	/* chosen when the batch is sent */
	unsigned cands;		/* upstreams that may serve it (bit i: ups[i]) */
	char *auth;		/* the client credential forwarded upstream (part of the key), or NULL */
	unsigned long est_tokens; /* estimated input tokens (embeddings' per-call token limit) */
	unsigned tried;		/* upstreams that failed it before any byte reached a client */
	char *key;
	struct member **members;
	unsigned nmembers, cap;
	unsigned nprompts;
	struct event *timer;
	bool in_map, in_queue, sent;
	int attempt;
	struct batch *hnext;	/* hash chain */
	struct batch *anext, *aprev; /* every live batch (bt->all), so that shutdown frees them */
	struct batch *qnext;	/* upstream wait queue */
	/* once sent */
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
	bool embed;
	bool unusable;		/* a 200 that is no event stream: its body is never kept or forwarded */
	struct event *ka_timer;	/* SSE keep-alive comments until the first upstream event */
	bool first_event;
};

struct batcher {
	struct event_base *base;
	const struct config *cfg;
	struct upstream *ups;
	int nups;
	struct batch *buckets[NBUCKETS];
	struct batch *qhead, *qtail; /* batches ready, waiting for an upstream with room */
	struct batch *all;
	uint64_t next_id;
	unsigned active;
	uint64_t last_arrival;	/* now_us() of the last request */
	uint64_t gap_ewma;	/* average gap between requests, us (recent ones weigh most) */
	struct batcher_stats st;
	struct metrics *metrics;
};

void batcher_set_metrics(struct batcher *bt, struct metrics *m) { bt->metrics = m; }

static void batch_send(struct batch *b);
static void batch_compact(struct batch *b);
static void batch_ready(struct batch *b);
static void flush_members(struct batch *b);

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
	struct batch **pp = &b->bt->buckets[bucket_of(b->key)];
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
	struct batcher *bt = b->bt;
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

/* --- members ------------------------------------------------------------------------------- */

static void parent_free(struct embed_parent *ep)
{
	embed_whole_release(&ep->w);
	free(ep);
}

static void member_free(struct member *m)
{
	if (m->parent && --m->parent->refs == 0)
		parent_free(m->parent);
	split_member_free(&m->sm);
	intake_free(&m->req);
	free(m->ptok_est);
	free(m);
}

static void member_gone_cb(void *arg);
static void member_left(struct member *m, bool may_free);
static void annotate(struct batch *b);
static unsigned requeue_unstarted(struct batch *b);

/* The member's client will hear nothing more from us (answered, or gone). */
static void member_detach(struct member *m)
{
	if (m->client)
		sink_on_gone(m->client, NULL, NULL);
	m->client = NULL;
	if (!m->answered) {
		m->answered = true;
		CNT_ADD(m->bt->active, -1);
	}
}

/* An error for a client whose stream has already started (keep-alive comments went out): an SSE
 * error event, [DONE], and the end of the stream. r is finished afterwards. */
static bool member_alive(const struct member *m)
{
	return m->parent ? m->parent->client != NULL && !m->parent->w.failed : m->client != NULL;
}

/* An embeddings part failed: its client gets this error (once), the other parts are dropped. */
static void part_fail_raw(struct member *m, int status, const char *ctype, const char *extra, const char *body,
			  size_t len)
{
	struct embed_parent *ep = m->parent;
	m->part_done = true;
	if (!ep->client || ep->w.failed)
		return;
	ep->w.failed = true;
	struct sink *r = ep->client;
	ep->client = NULL;
	sink_on_gone(r, NULL, NULL);
	CNT_ADD(ep->bt->active, -1);
	sink_reply(r, status, ctype, extra, body, len);
}

static void member_reply_error(struct member *m, int status, const char *msg, const char *type, const char *extra)
{
	if (m->parent) {
		char *body = openai_error_json(msg, type, NULL, NULL);
		part_fail_raw(m, status, "application/json", extra, body, strlen(body));
		free(body);
		return;
	}
	if (!m->client)
		return;
	struct sink *r = m->client;
	member_detach(m);
	char *body = openai_error_json(msg, type, NULL, NULL);
	if (m->head_sent)
		sink_stream_error(r, body, strlen(body));
	else
		sink_reply(r, status, "application/json", extra, body, strlen(body));
	free(body);
}

/* --- batches ------------------------------------------------------------------------------- */

static struct batch *batch_new(struct batcher *bt, unsigned cands, const char *key)
{
	struct batch *b = xcalloc(1, sizeof *b);
	b->id = ++bt->next_id;
	b->bt = bt;
	b->cands = cands;
	DLIST_PUSH(bt->all, b, aprev, anext);
	b->key = xstrdup(key);
	return b;
}

static void batch_add(struct batch *b, struct member *m)
{
	if (b->nmembers == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 8;
		b->members = xrealloc(b->members, b->cap * sizeof *b->members);
	}
	b->members[b->nmembers++] = m;
	b->nprompts += m->req.nprompts;
}

/* Sequences of a member: its prompts times n. */
static unsigned member_seqs(const struct member *m) { return m->req.nprompts * (m->req.n ? m->req.n : 1); }

/* Gives back to the upstream the sequences of b's call that have not ended yet (the call is over). */
static void batch_release_seqs(struct batch *b)
{
	if (b->seqs_held > b->seqs_ended)
		upstream_seqs_end(b->up, b->seqs_held - b->seqs_ended);
	b->seqs_held = b->seqs_ended = 0;
}

/* Gives back the slot of each sequence that ended since the last look (contract: room is counted
 * in sequences, and a short member frees its own at once, not when its call ends). */
static void batch_note_ended(struct batch *b)
{
	unsigned ended = b->split_ready ? b->sp.finished : 0; /* kept by the splitter: no walk per read */
	if (ended > b->seqs_held)
		ended = b->seqs_held;
	if (ended > b->seqs_ended) {
		upstream_seqs_end(b->up, ended - b->seqs_ended);
		b->seqs_ended = ended;
	}
}

/* Frees the batch and every member; members still connected get an error first. */
static void batch_free(struct batch *b)
{
	map_remove(b);
	queue_remove(b);
	DLIST_UNLINK(b->bt->all, b, aprev, anext);
	if (b->timer)
		event_free(b->timer);
	if (b->ka_timer)
		event_free(b->ka_timer);
	if (b->call)
		upcall_cancel(b->call);
	batch_release_seqs(b);
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (m->parent && !m->part_done)
			member_reply_error(m, 502, "carpool: the batch was dropped", "server_error", NULL);
		else if (m->client && !m->head_sent)
			member_reply_error(m, 502, "carpool: the batch was dropped", "server_error", NULL);
		else if (m->client) {
			struct sink *r = m->client;
			member_detach(m);
			sink_end(r);
		}
		member_free(m);
	}
	if (b->split_ready)
		split_free(&b->sp);
	sse_free(&b->sse);
	sbuf_free(&b->answer_body);
	free(b->sms);
	free(b->members);
	free(b->key);
	free(b->auth);
	free(b);
}

static unsigned alive_members(const struct batch *b)
{
	unsigned n = 0;
	for (unsigned i = 0; i < b->nmembers; i++)
		if (member_alive(b->members[i]))
			n++;
	return n;
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct batch *b = arg;
	if (b->sent)
		return;
	batch_ready(b);
}

static void ka_cb(evutil_socket_t fd, short what, void *arg);

/* Starts SSE keep-alive comments for b's streaming clients until the upstream's first event. */
static void batch_keepalive(struct batch *b)
{
	long ka = b->bt->cfg->timeouts.sse_keepalive_ms;
	if (ka <= 0)
		return;
	b->ka_timer = evtimer_new(b->bt->base, ka_cb, b);
	struct timeval tv = tv_of_ms(ka);
	evtimer_add(b->ka_timer, &tv);
}

/* The least-loaded candidate upstream with room, preferring upstreams that have not already failed
 * this batch; NULL if none has room now. */
static struct upstream *choose(struct batch *b)
{
	return upstream_pick(b->bt->ups, b->bt->nups, b->cands, b->tried, UPSTREAM_PICK_ROOM);
}

/* How long until some candidate is out of backoff (0: one is in service now). */
static long soonest_ms(struct batch *b)
{
	struct batcher *bt = b->bt;
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
	if (ms <= MAX_HOLD_MS)
		return false;
	char extra[48];
	snprintf(extra, sizeof extra, "Retry-After: %ld\r\n", (ms + 999) / 1000);
	log_warn("batch %llu: no upstream in service for %ld ms; answering 503", (unsigned long long)b->id, ms);
	for (unsigned i = 0; i < b->nmembers; i++)
		member_reply_error(b->members[i], 503, "No upstream is available right now; retry later.", "server_error",
				   extra);
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
	struct batch *nb = batch_new(b->bt, b->cands, b->key);
	nb->auth = b->auth ? xstrdup(b->auth) : NULL;
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
		b->up = up;
		batch_send(b);
		return true;
	}
	batch_compact(b);
	/* a request larger than the whole capacity still goes, once carpool has nothing else there */
	struct batch *front = batch_take_front(b, room, up->seqs == 0);
	if (!front)
		return false;
	front->up = up;
	batch_send(front);
	return front == b;
}

/* The batch may go: now if an upstream has room (and nobody queued before it), else it waits in
 * the queue - still open to new members until it is full. */
static void batch_ready(struct batch *b)
{
	struct batcher *bt = b->bt;
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
	struct batcher *bt = b->bt;
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
		} else if (soonest_ms(b) > MAX_HOLD_MS) {
			queue_remove(b);
			fail_if_none_live(b);
		}
		b = next;
	}
}

/* --- the upstream call ----------------------------------------------------------------------- */

static void call_head(void *arg, int status, const struct evkeyvalq *headers);
static void call_data(void *arg, const char *data, size_t len);
static void call_done(void *arg, enum upcall_error err);
static const struct upcall_ops call_ops = {call_head, call_data, call_done};

static enum dialect batch_dialect(const struct batch *b)
{
	return b->up->dialect == DIALECT_AUTO ? DIALECT_OPENAI : b->up->dialect;
}

/* The upstream body: the first member's request with every member's prompts, always streamed. */
static char *build_body(struct batch *b, enum dialect d)
{
	const struct intake_req **reqs = xcalloc(b->nmembers, sizeof *reqs);
	for (unsigned i = 0; i < b->nmembers; i++)
		reqs[i] = &b->members[i]->req;
	char *s = reqbody_completion(reqs, b->nmembers, d);
	free(reqs);
	return s;
}

/* The upstream body of an embeddings batch: the first part's request with every part's inputs. */
static char *build_embed_body(struct batch *b)
{
	cJSON *body = cJSON_Duplicate(b->members[0]->req.body, 1);
	cJSON *inputs = cJSON_CreateArray();
	for (unsigned i = 0; i < b->nmembers; i++)
		for (cJSON *p = b->members[i]->req.prompts->child; p; p = p->next)
			cJSON_AddItemToArray(inputs, cJSON_Duplicate(p, 1));
	json_set(body, "input", inputs);
	char *s = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	return s;
}

/* Drops members that left while queued; compacts the member array. */
static void batch_compact(struct batch *b)
{
	unsigned j = 0;
	b->nprompts = 0;
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (!member_alive(m)) {
			member_free(m);
			continue;
		}
		b->members[j++] = m;
		b->nprompts += m->req.nprompts;
	}
	b->nmembers = j;
}

static void batch_send(struct batch *b)
{
	struct batcher *bt = b->bt;
	map_remove(b);
	queue_remove(b);
	if (b->timer)
		evtimer_del(b->timer);
	batch_compact(b);
	if (!b->nmembers) {
		batch_free(b);
		return;
	}
	b->sent = true;
	enum dialect d = batch_dialect(b);
	char *body = b->embed ? build_embed_body(b) : build_body(b, d);
	/* the call's request id names the batch; each member's access-log line names the batch too */
	char rid[48];
	snprintf(rid, sizeof rid, "carpool-batch-%llu", (unsigned long long)b->id);
	const char *hdrs[] = {"Content-Type", "application/json", "Accept", b->embed ? "application/json" : "text/event-stream",
			      "X-Request-Id", rid};
	/* carpool's own credential when the upstream has one; a client key is never forwarded */
	const char *auth = b->up->auth ? NULL : b->auth;
	b->t_sent = now_us();
	b->status = 0;
	annotate(b);
	if (bt->metrics)
		metrics_observe_count(&bt->metrics->prompts_per_call, b->nprompts);
	CNT_ADD(bt->st.calls, 1);
	CNT_ADD(bt->st.call_prompts, b->nprompts);
	if (b->nprompts > bt->st.max_call_prompts)
		CNT_ADD(bt->st.max_call_prompts, b->nprompts - bt->st.max_call_prompts);
	log_debug("batch %llu: sending %u prompts from %u clients to %s", (unsigned long long)b->id, b->nprompts,
		  b->nmembers, b->up->cfg->url);
	b->call = upstream_call(b->up, "POST", b->embed ? "/v1/embeddings" : "/v1/completions", hdrs, 3, auth, body,
				strlen(body), &call_ops, b);
	free(body);
	if (!b->call) {
		char msg[300];
		snprintf(msg, sizeof msg, "carpool could not reach the upstream %.200s", b->up->cfg->url);
		for (unsigned i = 0; i < b->nmembers; i++)
			member_reply_error(b->members[i], 502, msg, "server_error", NULL);
		batch_free(b);
		return;
	}
	b->seqs_held = 0;
	for (unsigned i = 0; i < b->nmembers; i++)
		b->seqs_held += member_seqs(b->members[i]);
	b->seqs_ended = 0;
	upstream_seqs_take(b->up, b->seqs_held);
}

static void batch_extra_headers(struct batch *b, struct member *m, char *buf, size_t len)
{
	/* the queue time in ms with one decimal, rounded, in integers (no floating-point printf per client) */
	unsigned long long tenths = b->t_sent > m->t_arrival ? (b->t_sent - m->t_arrival + 50) / 100 : 0;
	snprintf(buf, len, "X-Carpool-Batch: %llu; size=%u\r\nX-Carpool-Usage: %s\r\nServer-Timing: queue;dur=%llu.%llu\r\n",
		 (unsigned long long)b->id, b->nprompts, m->sm.usage_exact ? "exact" : "estimated", tenths / 10,
		 tenths % 10);
}

/* Notes the batch on each client request, for the access log. */
static void annotate(struct batch *b)
{
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		struct sink *r = m->parent ? m->parent->client : m->client;
		if (!r)
			continue;
		r->note.batch_id = b->id;
		r->note.batch_size = b->nprompts;
		r->note.queue_us = b->t_sent - m->t_arrival;
		if (b->bt->metrics && b->attempt == 0)
			metrics_observe_ms(&b->bt->metrics->queue_seconds, (double)r->note.queue_us / 1000.0);
		r->note.upstream = b->up->cfg->url;
		r->note.prompts = m->parent ? m->parent->w.ninputs : m->req.nprompts;
	}
}

static void ka_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct batch *b = arg;
	if (b->first_event)
		return;
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (!m->client || !m->req.stream)
			continue;
		if (!m->head_sent) {
			sink_start(m->client, 200, "text/event-stream",
					  "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
			m->head_sent = true;
		}
		sink_write(m->client, ": keep-alive\n\n", 14);
	}
	if (b->call && alive_members(b) == 0) {
		batch_free(b);
		return;
	}
	long ms = b->bt->cfg->timeouts.sse_keepalive_ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(b->ka_timer, &tv);
}

static void call_head(void *arg, int status, const struct evkeyvalq *headers)
{
	struct batch *b = arg;
	b->status = status;
	const char *ct = evhttp_find_header(headers, "Content-Type");
	snprintf(b->content_type, sizeof b->content_type, "%s", ct ? ct : "application/json");
	const char *ra = evhttp_find_header(headers, "Retry-After");
	snprintf(b->retry_after, sizeof b->retry_after, "%s", ra ? ra : "");
	if (status != 200 || b->embed)
		return;
	if (!ct || strncasecmp(ct, "text/event-stream", 17)) {
		/* A 200 that does not stream answers every member of a merged call at once: its body is
		 * dropped unread, and each member gets carpool's own 502 (never another client's text). */
		b->status = 502;
		b->unusable = true;
		log_warn("batch %llu: upstream %s answered 200 with Content-Type %.60s instead of an event stream",
			 (unsigned long long)b->id, b->up->cfg->url, ct ? ct : "(none)");
		return;
	}
	enum dialect d = batch_dialect(b);
	const char *server = evhttp_find_header(headers, "Server");
	if (server && strstr(server, "llama.cpp"))
		d = DIALECT_LLAMACPP;
	b->sms = xcalloc(b->nmembers, sizeof *b->sms);
	for (unsigned i = 0; i < b->nmembers; i++)
		b->sms[i] = &b->members[i]->sm;
	unsigned n = b->members[0]->req.n;
	split_init(&b->sp, d, n, b->sms, b->nmembers);
	b->split_ready = true;
	sse_init(&b->sse, MAX_SSE_EVENT);
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (!m->client) {
			split_member_gone(&b->sp, &m->sm);
			continue;
		}
		if (m->req.stream && !m->head_sent) {
			char extra[512];
			int k = snprintf(extra, sizeof extra,
					 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n");
			batch_extra_headers(b, m, extra + k, sizeof extra - (size_t)k);
			sink_start(m->client, 200, "text/event-stream", extra);
			m->head_sent = true;
		}
	}
}

static int sse_cb(void *arg, const struct sse_event *ev)
{
	struct batch *b = arg;
	b->first_event = true;
	if (split_event(&b->sp, ev->data, ev->len, ev->is_error) != CP_OK)
		log_warn("batch %llu: an upstream event was not understood: %.200s", (unsigned long long)b->id, ev->data);
	return CP_OK;
}

/* The member's client left. With may_free, a batch whose clients have all left is freed (and its
 * upstream call cancelled) at once; otherwise the caller checks. */
static void member_left(struct member *m, bool may_free)
{
	struct batcher *bt = m->bt;
	m->client = NULL;
	if (!m->answered) {
		m->answered = true;
		CNT_ADD(bt->active, -1);
	}
	CNT_ADD(bt->st.gone, 1);
	struct batch *b = m->sm.batch;
	if (!b)
		return;
	if (b->split_ready)
		split_member_gone(&b->sp, &m->sm);
	if (may_free && b->sent && b->call && alive_members(b) == 0) {
		log_info("batch %llu: every client left; cancelling the upstream call", (unsigned long long)b->id);
		batch_free(b);
	}
}

static void member_gone_cb(void *arg) { member_left(arg, true); }

/* Writes what the splitter produced, and ends the responses of members that are done. A client
 * dropped for reading too slowly is heard of later, from the loop (its gone callback). */
static void flush_members(struct batch *b)
{
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (!m->sm.dirty)
			continue;
		m->sm.dirty = false;
		if (!m->client) {
			sbuf_reset(&m->sm.out);
			continue;
		}
		if (m->req.stream) {
			if (m->sm.out.len) {
				sink_write(m->client, m->sm.out.data, m->sm.out.len);
				m->wrote = true;
			}
			sbuf_reset(&m->sm.out);
			if (m->sm.done) {
				struct sink *r = m->client;
				if (b->bt->metrics)
					for (unsigned c = 0; c < m->sm.nchoices; c++)
						CNT_ADD(b->bt->metrics->tokens_streamed_total, m->sm.ntokens[c]);
				member_detach(m);
				sink_end(r);
			}
		} else if (m->sm.done) {
			struct sink *r = m->client;
			char extra[256];
			batch_extra_headers(b, m, extra, sizeof extra);
			member_detach(m);
			sink_reply(r, m->sm.status, "application/json", extra, m->sm.out.data, m->sm.out.len);
			sbuf_free(&m->sm.out);
		}
	}
}

static void call_data(void *arg, const char *data, size_t len)
{
	struct batch *b = arg;
	if (b->embed) {
		if (b->answer_body.len + len <= MAX_EMBED_BODY)
			sbuf_add(&b->answer_body, data, len);
		else
			b->status = 502;
		return;
	}
	if (b->unusable)
		return;
	if (b->status != 200) {
		if (b->answer_body.len + len <= MAX_ERROR_BODY)
			sbuf_add(&b->answer_body, data, len);
		return;
	}
	if (sse_feed(&b->sse, data, len, sse_cb, b) != CP_OK) {
		log_error("batch %llu: upstream SSE event larger than %u bytes", (unsigned long long)b->id, MAX_SSE_EVENT);
		split_end(&b->sp, 502, "the upstream sent an event larger than carpool accepts");
		flush_members(b);
		batch_free(b);
		return;
	}
	flush_members(b);
	batch_note_ended(b);
}

/* The upstream refused a batch of several members: send two halves apart, so that only the
 * member(s) at fault get the error (contract 6). Members move into the new batches. */
static void bisect(struct batch *b)
{
	struct batcher *bt = b->bt;
	batch_compact(b);
	unsigned half = b->nmembers / 2;
	struct batch *parts[2] = {batch_new(bt, b->cands, b->key), batch_new(bt, b->cands, b->key)};
	parts[0]->embed = parts[1]->embed = b->embed;
	parts[0]->auth = b->auth ? xstrdup(b->auth) : NULL;
	parts[1]->auth = b->auth ? xstrdup(b->auth) : NULL;
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		m->sm.batch = parts[i < half ? 0 : 1];
		batch_add(parts[i < half ? 0 : 1], m);
	}
	b->nmembers = 0;
	CNT_ADD(bt->st.bisections, 1);
	log_info("batch %llu: upstream refused it with %d; retrying as batches %llu (%u) and %llu (%u)",
		 (unsigned long long)b->id, b->status, (unsigned long long)parts[0]->id, parts[0]->nmembers,
		 (unsigned long long)parts[1]->id, parts[1]->nmembers);
	batch_free(b);
	/* second half queued first so that the first half ends up at the head */
	batch_ready_first(parts[1]);
	batch_ready_first(parts[0]);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct batch *b = arg;
	b->sent = false;
	batch_ready_first(b);
}

/* Answers every member with the upstream's error as it came (status and body). */
static void forward_error(struct batch *b)
{
	char extra[128] = "";
	if (b->retry_after[0])
		snprintf(extra, sizeof extra, "Retry-After: %s\r\n", b->retry_after);
	/* Only a body that is one JSON error object, whole, is forwarded as it came; anything else is
	 * quoted only to the lone member of a single-member call (an upstream page may echo the
	 * request, and a merged request holds other clients' prompts). */
	const char *end = NULL;
	cJSON *j = cJSON_ParseWithLengthOpts(b->answer_body.data ? b->answer_body.data : "", b->answer_body.len, &end, false);
	while (j && end < b->answer_body.data + b->answer_body.len && strchr(" \t\r\n", *end))
		end++;
	bool is_error_json = j && end == b->answer_body.data + b->answer_body.len &&
			     cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "error"));
	bool quote = b->nmembers == 1;
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (m->parent && is_error_json) {
			part_fail_raw(m, b->status, "application/json", extra[0] ? extra : NULL, b->answer_body.data, b->answer_body.len);
			continue;
		}
		if (m->parent) {
			char msg[256];
			snprintf(msg, sizeof msg, "the upstream answered %d", b->status);
			member_reply_error(m, b->status >= 500 ? 502 : b->status, msg, "server_error", extra[0] ? extra : NULL);
			continue;
		}
		if (!m->client)
			continue;
		struct sink *r = m->client;
		member_detach(m);
		if (is_error_json && m->head_sent) {
			sink_stream_error(r, b->answer_body.data, b->answer_body.len);
		} else if (is_error_json) {
			sink_reply(r, b->status, "application/json", extra[0] ? extra : NULL, b->answer_body.data, b->answer_body.len);
		} else {
			char msg[512];
			snprintf(msg, sizeof msg, "the upstream %.200s answered %d%s%.160s", b->up->cfg->url, b->status,
				 quote && b->answer_body.len ? ": " : "", quote && b->answer_body.data ? b->answer_body.data : "");
			char *body = openai_error_json(msg, b->status < 500 ? "invalid_request_error" : "server_error", NULL,
						       NULL);
			if (m->head_sent)
				sink_stream_error(r, body, strlen(body));
			else
				sink_reply(r, b->status >= 500 ? 502 : b->status, "application/json", extra[0] ? extra : NULL,
					   body, strlen(body));
			free(body);
		}
	}
	cJSON_Delete(j);
}

/* The upstream broke mid-stream: members to whom nothing of the answer was written yet (non-stream
 * clients, streams still waiting for their first token) move to a new batch on another upstream;
 * the rest end with an error event. Returns how many moved. */
static unsigned requeue_unstarted(struct batch *b)
{
	struct batcher *bt = b->bt;
	if (b->attempt + 1 >= MAX_ATTEMPTS)
		return 0;
	struct batch *nb = NULL;
	unsigned j = 0, moved = 0;
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (m->parent || !m->client || m->wrote || m->sm.done) {
			b->members[j++] = m;
			continue;
		}
		if (!nb) {
			nb = batch_new(bt, b->cands, b->key);
			nb->auth = b->auth ? xstrdup(b->auth) : NULL;
			nb->attempt = b->attempt + 1;
			nb->tried = b->tried | (1u << b->up->index);
		}
		split_member_gone(&b->sp, &m->sm); /* the old split writes nothing more for it */
		m->sm.gone = false;
		m->sm.batch = nb;
		batch_add(nb, m);
		moved++;
	}
	b->nmembers = j;
	if (!nb)
		return 0;
	/* the old split still points at the moved members: it must not touch them again */
	for (unsigned i = 0; i < b->sp.nmembers; i++) {
		bool kept = false;
		for (unsigned k = 0; k < b->nmembers; k++)
			kept = kept || &b->members[k]->sm == b->sp.members[i];
		if (!kept)
			b->sp.members[i] = NULL;
	}
	CNT_ADD(bt->st.retries, 1);
	log_warn("batch %llu: upstream %s broke mid-stream; %u clients that had no bytes yet move to batch %llu",
		 (unsigned long long)b->id, b->up->cfg->url, moved, (unsigned long long)nb->id);
	batch_ready_first(nb);
	return moved;
}

static void embed_reply(struct embed_parent *ep)
{
	struct sink *r = ep->client;
	ep->client = NULL;
	sink_on_gone(r, NULL, NULL);
	CNT_ADD(ep->bt->active, -1);
	char *body = embed_reply_body(&ep->w);
	char extra[160];
	snprintf(extra, sizeof extra, "X-Carpool-Batch: %llu; size=%u\r\nX-Carpool-Usage: %s\r\n",
		 (unsigned long long)ep->w.batch_id, ep->w.batch_size, ep->w.exact ? "exact" : "estimated");
	sink_reply(r, 200, "application/json", extra, body, strlen(body));
	free(body);
}

/* A 200 answer to an embeddings batch: data[] goes back to the parts by index, usage is shared. */
static void embed_split(struct batch *b)
{
	struct embed_part *parts = xcalloc(b->nmembers, sizeof *parts);
	struct embed_part **pp = xcalloc(b->nmembers, sizeof *pp);
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		parts[i] = (struct embed_part){&m->parent->w, m->offset, m->req.nprompts, m->ptok_est};
		pp[i] = &parts[i];
	}
	int rc = embed_take_answer(b->answer_body.data, b->answer_body.len, pp, b->nmembers, b->id);
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		if (rc != CP_OK) {
			member_reply_error(m, 502, "the upstream's embeddings answer was not understood", "server_error",
					   NULL);
			continue;
		}
		m->part_done = true;
		if (m->parent->w.parts_left == 0 && m->parent->client && !m->parent->w.failed)
			embed_reply(m->parent);
	}
	free(pp);
	free(parts);
}

static void call_done(void *arg, enum upcall_error err)
{
	struct batch *b = arg;
	struct batcher *bt = b->bt;
	b->call = NULL;
	batch_release_seqs(b); /* the call is over: whatever had not ended has */
	if (err != UPE_NONE)
		CNT_ADD(bt->st.upstream_errors, 1);
	if (b->embed && b->status == 200 && err == UPE_NONE) {
		embed_split(b);
		batch_free(b);
		return;
	}
	if (b->status == 200 && b->split_ready) {
		if (err == UPE_NONE) {
			split_end(&b->sp, 0, NULL);
		} else {
			requeue_unstarted(b);
			char msg[300];
			snprintf(msg, sizeof msg, "the upstream %.200s failed mid-stream (%s)", b->up->cfg->url,
				 upcall_error_name(err));
			split_end(&b->sp, err == UPE_IDLE ? 504 : 502, msg);
		}
		flush_members(b);
		batch_free(b);
		return;
	}
	long retry_after_ms = b->retry_after[0] ? atol(b->retry_after) * 1000 : 0;
	if (b->status == 429 || b->status == 503)
		upstream_backoff(b->up, retry_after_ms > 0 ? retry_after_ms : 1000);
	/* Nothing reached any client yet: safe to retry, on another upstream when there is one
	 * (contract 11). Connect failures, breaks, timeouts, 429 and 5xx qualify. */
	bool other = false; /* another candidate that has not failed this batch */
	for (int i = 0; i < bt->nups; i++)
		if ((b->cands & (1u << i)) && i != b->up->index && !(b->tried & (1u << i)))
			other = true;
	bool retryable;
	if (b->status == 0)
		/* a refused or broken new connection: once more, anywhere (a kept-alive one the server
		 * closed never gets here: the upstream re-sends it itself); a timeout only elsewhere */
		retryable = err == UPE_FIRST_BYTE ? other : err != UPE_NONE;
	else if (b->unusable)
		retryable = other; /* the same upstream would answer the same way */
	else if (b->status == 429 || b->status == 503)
		retryable = other || (retry_after_ms <= MAX_HOLD_MS);
	else
		retryable = b->status >= 500 && b->status != 501;
	if (retryable && b->attempt + 1 < MAX_ATTEMPTS && alive_members(b)) {
		b->attempt++;
		b->tried |= 1u << b->up->index;
		CNT_ADD(bt->st.retries, 1);
		CNT_ADD(b->up->retries_in, 1);
		if (!b->timer)
			b->timer = evtimer_new(bt->base, retry_cb, b);
		else
			event_assign(b->timer, bt->base, -1, 0, retry_cb, b);
		long ms = RETRY_BACKOFF_MS << (b->attempt - 1);
		/* the same upstream takes it no sooner than its backoff (a 429 / 503, or an ejection) ends */
		uint64_t now = now_us();
		uint64_t until = upstream_backoff_until(b->up);
		long held = until > now ? (long)((until - now + 999) / 1000) : 0;
		bool backed_off = held > ms;
		if (backed_off)
			ms = held;
		if (other)
			ms = 0; /* another upstream can take it at once */
		if (ms > 30000)
			ms = 30000;
		struct timeval tv = tv_of_ms(ms);
		evtimer_add(b->timer, &tv);
		log_warn("batch %llu: upstream %s failed it (%s, status %d) before any byte reached a client; retry %d in %ld ms%s",
			 (unsigned long long)b->id, b->up->cfg->url, upcall_error_name(err), b->status, b->attempt, ms,
			 backed_off && !other ? ", when its backoff ends" : "");
		sbuf_reset(&b->answer_body);
		b->unusable = false;
		return;
	}
	if (b->unusable) {
		char msg[400];
		snprintf(msg, sizeof msg, "the upstream %.200s answered without an event stream; carpool cannot split it",
			 b->up->cfg->url);
		for (unsigned i = 0; i < b->nmembers; i++)
			member_reply_error(b->members[i], 502, msg, "server_error", NULL);
		batch_free(b);
		return;
	}
	if (b->status == 0) {
		int status = err == UPE_FIRST_BYTE || err == UPE_IDLE ? 504 : 502;
		char msg[300];
		snprintf(msg, sizeof msg, "carpool could not get an answer from the upstream %.200s (%s)", b->up->cfg->url,
			 upcall_error_name(err));
		for (unsigned i = 0; i < b->nmembers; i++)
			member_reply_error(b->members[i], status, msg, "server_error", NULL);
		batch_free(b);
		return;
	}
	/* The upstream refused the call. */
	bool member_fault = b->status >= 400 && b->status < 500 && b->status != 408 && b->status != 429 &&
			    b->status != 401 && b->status != 403;
	if (member_fault && alive_members(b) > 1 && err == UPE_NONE) {
		bisect(b);
		return;
	}
	if (err != UPE_NONE && !b->answer_body.len) {
		char msg[300];
		snprintf(msg, sizeof msg, "the upstream %.200s failed (%s)", b->up->cfg->url, upcall_error_name(err));
		for (unsigned i = 0; i < b->nmembers; i++)
			member_reply_error(b->members[i], 502, msg, "server_error", NULL);
	} else {
		forward_error(b);
	}
	batch_free(b);
}

/* --- submission ------------------------------------------------------------------------------- */

static bool over_queue_limit(struct batcher *bt, struct sink *client, struct intake_req *r)
{
	if (bt->active < (unsigned)bt->cfg->limits.max_queue)
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
	return bt->active <= 1 || bt->gap_ewma > (uint64_t)bt->cfg->batching.max_wait_ms * 1000u;
}

/* Notes a request's arrival in the average gap (each gap counted up to twice the window, so that
 * a burst after a quiet spell is seen within a few requests). */
static void note_arrival(struct batcher *bt)
{
	uint64_t now = now_us(), cap = (uint64_t)bt->cfg->batching.max_wait_ms * 2000u;
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
	const struct config *cfg = bt->cfg;
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
		b = batch_new(bt, cands, key.data);
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
	b->timer = evtimer_new(bt->base, timer_cb, b);
	long ms = cfg->batching.max_wait_ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(b->timer, &tv);
}

void batcher_submit(struct batcher *bt, struct sink *client, struct intake_req *r, unsigned cands, const char *auth)
{
	if (over_queue_limit(bt, client, r))
		return;
	struct member *m = xcalloc(1, sizeof *m);
	m->bt = bt;
	m->client = client;
	m->req = *r;
	memset(r, 0, sizeof *r);
	m->t_arrival = now_us();
	m->sm.nprompts = m->req.nprompts;
	m->sm.stream = m->req.stream;
	m->sm.include_usage = m->req.include_usage;
	m->ptok_est = estimate_tokens(m->req.prompts, m->req.nprompts);
	m->sm.prompt_tokens_est = m->ptok_est;
	CNT_ADD(bt->active, 1);
	CNT_ADD(bt->st.requests, 1);
	CNT_ADD(bt->st.prompts, m->req.nprompts);
	note_arrival(bt);
	sink_on_gone(client, member_gone_cb, m);
	place(bt, m, cands, auth, (unsigned)bt->cfg->batching.max_batch_size, 0);
}

static void parent_gone_cb(void *arg)
{
	struct embed_parent *ep = arg;
	struct batcher *bt = ep->bt;
	ep->client = NULL;
	CNT_ADD(bt->active, -1);
	CNT_ADD(bt->st.gone, 1);
	/* a call in flight whose clients have all left is cancelled (contract 7) */
	for (struct batch *b = bt->all, *next; b; b = next) {
		next = b->anext;
		if (b->embed && b->call && alive_members(b) == 0)
			batch_free(b);
	}
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
	unsigned cap = (unsigned)bt->cfg->batching.max_batch_size;
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
	struct embed_parent *ep = xcalloc(1, sizeof *ep);
	ep->bt = bt;
	ep->client = client;
	embed_whole_init(&ep->w, r->nprompts, nparts);
	ep->refs = nparts;
	note_arrival(bt);
	CNT_ADD(bt->active, 1);
	CNT_ADD(bt->st.requests, 1);
	CNT_ADD(bt->st.prompts, r->nprompts);
	sink_on_gone(client, parent_gone_cb, ep);
	cJSON *inputs = r->prompts;
	for (unsigned pi = 0; pi < nparts; pi++) {
		struct member *m = xcalloc(1, sizeof *m);
		m->bt = bt;
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
	bt->base = base;
	bt->cfg = cfg;
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
	while (bt->all) /* queued, open, in flight or waiting to retry */
		batch_free(bt->all);
	free(bt);
}

struct batcher_stats batcher_stats(const struct batcher *bt)
{
	/* /metrics may ask from another worker's thread */
	struct batcher_stats st = {
		.requests = CNT_GET(bt->st.requests),
		.prompts = CNT_GET(bt->st.prompts),
		.calls = CNT_GET(bt->st.calls),
		.call_prompts = CNT_GET(bt->st.call_prompts),
		.bisections = CNT_GET(bt->st.bisections),
		.retries = CNT_GET(bt->st.retries),
		.upstream_errors = CNT_GET(bt->st.upstream_errors),
		.gone = CNT_GET(bt->st.gone),
		.active = CNT_GET(bt->active),
		.max_call_prompts = CNT_GET(bt->st.max_call_prompts),
	};
	return st;
}

unsigned batcher_active(const struct batcher *bt) { return bt->active; }
