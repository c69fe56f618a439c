/* call: one batched upstream call on the wire - the body, the send, the answer split back to the
 * members as it streams, and what a failure leads to: bisection, retry and requeue (through the
 * home's requeue hook), or the error to the clients. */
#include "carpool/call.h"
#include "carpool/metrics.h"
#include "carpool/reqbody.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_ERROR_BODY 65536
#define MAX_SSE_EVENT (4u << 20)
#define RETRY_BACKOFF_MS 100
#define MAX_EMBED_BODY (256u << 20)

static void annotate(struct batch *b);
static void call_head(void *arg, int status, const struct evkeyvalq *headers);
static void call_data(void *arg, const char *data, size_t len);
static void call_done(void *arg, enum upcall_error err);
static const struct upcall_ops call_ops = {call_head, call_data, call_done};
/* an embeddings call: its answer is one JSON body, kept whole (embed.c splits it) */
static void embed_head(void *arg, int status, const struct evkeyvalq *headers);
static void embed_data(void *arg, const char *data, size_t len);
static void embed_done(void *arg, enum upcall_error err);
static const struct upcall_ops embed_ops = {embed_head, embed_data, embed_done};

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

void call_send(struct batch *b)
{
	struct batch_home *h = b->home;
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
	if (h->metrics)
		metrics_observe_count(&h->metrics->prompts_per_call, b->nprompts);
	CNT_ADD(h->st.calls, 1);
	CNT_ADD(h->st.call_prompts, b->nprompts);
	if (b->nprompts > h->st.max_call_prompts)
		CNT_ADD(h->st.max_call_prompts, b->nprompts - h->st.max_call_prompts);
	log_debug("batch %llu: sending %u prompts from %u clients to %s", (unsigned long long)b->id, b->nprompts,
		  b->nmembers, b->up->cfg->url);
	b->call = upstream_call(b->up, "POST", b->embed ? "/v1/embeddings" : "/v1/completions", hdrs, 3, auth, body,
				strlen(body), b->embed ? &embed_ops : &call_ops, b);
	free(body);
	if (!b->call) {
		char msg[300];
		snprintf(msg, sizeof msg, "carpool could not reach the upstream %.200s", b->up->cfg->url);
		batch_reply_error(b, 502, msg, "server_error", NULL);
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
		if (b->home->metrics && b->attempt == 0)
			metrics_observe_ms(&b->home->metrics->queue_seconds, (double)r->note.queue_us / 1000.0);
		r->note.upstream = b->up->cfg->url;
		r->note.prompts = m->parent ? m->parent->w.ninputs : m->req.nprompts;
	}
}

/* The head of either kind of answer: its status, Content-Type and Retry-After. */
static const char *note_head(struct batch *b, int status, const struct evkeyvalq *headers)
{
	b->status = status;
	const char *ct = evhttp_find_header(headers, "Content-Type");
	snprintf(b->content_type, sizeof b->content_type, "%s", ct ? ct : "application/json");
	const char *ra = evhttp_find_header(headers, "Retry-After");
	snprintf(b->retry_after, sizeof b->retry_after, "%s", ra ? ra : "");
	return ct;
}

static void embed_head(void *arg, int status, const struct evkeyvalq *headers) { note_head(arg, status, headers); }

static void call_head(void *arg, int status, const struct evkeyvalq *headers)
{
	struct batch *b = arg;
	const char *ct = note_head(b, status, headers);
	if (status != 200)
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
	sse_borrow(&b->sse, true); /* the splitter reads an event by its length */
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
		log_warn("batch %llu: an upstream event was not understood: %.*s", (unsigned long long)b->id,
			 ev->len < 200 ? (int)ev->len : 200, ev->data);
	return CP_OK;
}

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
				if (b->home->metrics)
					for (unsigned c = 0; c < m->sm.nchoices; c++)
						CNT_ADD(b->home->metrics->tokens_streamed_total, m->sm.ntokens[c]);
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

/* An embeddings answer (or error) is kept whole, up to a bound (past it: a 502). */
static void embed_data(void *arg, const char *data, size_t len)
{
	struct batch *b = arg;
	if (b->answer_body.len + len <= MAX_EMBED_BODY)
		sbuf_add(&b->answer_body, data, len);
	else
		b->status = 502;
}

static void call_data(void *arg, const char *data, size_t len)
{
	struct batch *b = arg;
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
	struct batch_home *h = b->home;
	batch_compact(b);
	unsigned half = b->nmembers / 2;
	struct batch *parts[2] = {batch_new_like(b), batch_new_like(b)};
	for (unsigned i = 0; i < b->nmembers; i++) {
		struct member *m = b->members[i];
		m->sm.batch = parts[i < half ? 0 : 1];
		batch_add(parts[i < half ? 0 : 1], m);
	}
	b->nmembers = 0;
	CNT_ADD(h->st.bisections, 1);
	log_info("batch %llu: upstream refused it with %d; retrying as batches %llu (%u) and %llu (%u)",
		 (unsigned long long)b->id, b->status, (unsigned long long)parts[0]->id, parts[0]->nmembers,
		 (unsigned long long)parts[1]->id, parts[1]->nmembers);
	batch_free(b);
	/* second half queued first so that the first half ends up at the head */
	h->requeue(parts[1]);
	h->requeue(parts[0]);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct batch *b = arg;
	b->sent = false;
	b->home->requeue(b);
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
			member_fail_part(m, b->status, "application/json", extra[0] ? extra : NULL, b->answer_body.data, b->answer_body.len);
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
	struct batch_home *h = b->home;
	if (b->attempt + 1 >= BATCH_MAX_ATTEMPTS)
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
			nb = batch_new_like(b);
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
	CNT_ADD(h->st.retries, 1);
	log_warn("batch %llu: upstream %s broke mid-stream; %u clients that had no bytes yet move to batch %llu",
		 (unsigned long long)b->id, b->up->cfg->url, moved, (unsigned long long)nb->id);
	h->requeue(nb);
	return moved;
}

static void embed_reply(struct member_parent *ep)
{
	struct sink *r = ep->client;
	ep->client = NULL;
	sink_on_gone(r, NULL, NULL);
	CNT_ADD(ep->home->active, -1);
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
	struct batch_home *h = b->home;
	b->call = NULL;
	batch_release_seqs(b); /* the call is over: whatever had not ended has */
	if (err != UPE_NONE)
		CNT_ADD(h->st.upstream_errors, 1);
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
	/* another candidate that has not failed this batch */
	bool other = (b->cands & ~b->tried & ~(1u << b->up->index)) != 0;
	bool retryable;
	if (b->status == 0)
		/* a refused or broken new connection: once more, anywhere (a kept-alive one the server
		 * closed never gets here: the upstream re-sends it itself); a timeout only elsewhere */
		retryable = err == UPE_FIRST_BYTE ? other : err != UPE_NONE;
	else if (b->unusable)
		retryable = other; /* the same upstream would answer the same way */
	else if (b->status == 429 || b->status == 503)
		retryable = other || (retry_after_ms <= BATCH_MAX_HOLD_MS);
	else
		retryable = b->status >= 500 && b->status != 501;
	if (retryable && b->attempt + 1 < BATCH_MAX_ATTEMPTS && batch_alive_members(b)) {
		b->attempt++;
		b->tried |= 1u << b->up->index;
		CNT_ADD(h->st.retries, 1);
		CNT_ADD(b->up->retries_in, 1);
		if (!b->timer)
			b->timer = evtimer_new(h->base, retry_cb, b);
		else
			event_assign(b->timer, h->base, -1, 0, retry_cb, b);
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
		batch_reply_error(b, 502, msg, "server_error", NULL);
		batch_free(b);
		return;
	}
	if (b->status == 0) {
		int status = err == UPE_FIRST_BYTE || err == UPE_IDLE ? 504 : 502;
		char msg[300];
		snprintf(msg, sizeof msg, "carpool could not get an answer from the upstream %.200s (%s)", b->up->cfg->url,
			 upcall_error_name(err));
		batch_reply_error(b, status, msg, "server_error", NULL);
		batch_free(b);
		return;
	}
	/* The upstream refused the call. */
	bool member_fault = b->status >= 400 && b->status < 500 && b->status != 408 && b->status != 429 &&
			    b->status != 401 && b->status != 403;
	if (member_fault && batch_alive_members(b) > 1 && err == UPE_NONE) {
		bisect(b);
		return;
	}
	if (err != UPE_NONE && !b->answer_body.len) {
		char msg[300];
		snprintf(msg, sizeof msg, "the upstream %.200s failed (%s)", b->up->cfg->url, upcall_error_name(err));
		batch_reply_error(b, 502, msg, "server_error", NULL);
	} else {
		forward_error(b);
	}
	batch_free(b);
}

/* A whole 200 goes back to the parts; anything else is what call_done() does with any failure. */
static void embed_done(void *arg, enum upcall_error err)
{
	struct batch *b = arg;
	if (b->status == 200 && err != UPE_NONE) {
		/* a 200 whose body broke is no answer (nothing reached a client: it may go again) */
		b->status = 0;
		sbuf_reset(&b->answer_body);
	}
	if (b->status != 200 || err != UPE_NONE) {
		call_done(b, err);
		return;
	}
	b->call = NULL;
	batch_release_seqs(b);
	embed_split(b);
	batch_free(b);
}
