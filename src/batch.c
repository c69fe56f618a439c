/* batch: members and batches, and their lifecycle. */
#include "carpool/batch.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

static void parent_free(struct member_parent *ep)
{
	embed_whole_release(&ep->w);
	free(ep);
}

void member_free(struct member *m)
{
	if (m->parent && --m->parent->refs == 0)
		parent_free(m->parent);
	split_member_free(&m->sm);
	intake_free(&m->req);
	free(m->ptok_est);
	free(m);
}

void member_detach(struct member *m)
{
	if (m->client)
		sink_on_gone(m->client, NULL, NULL);
	m->client = NULL;
	if (!m->answered) {
		m->answered = true;
		CNT_ADD(m->home->active, -1);
	}
}

bool member_alive(const struct member *m)
{
	return m->parent ? m->parent->client != NULL && !m->parent->w.failed : m->client != NULL;
}

void member_fail_part(struct member *m, int status, const char *ctype, const char *extra, const char *body,
		      size_t len)
{
	struct member_parent *ep = m->parent;
	m->part_done = true;
	if (!ep->client || ep->w.failed)
		return;
	ep->w.failed = true;
	struct sink *r = ep->client;
	ep->client = NULL;
	sink_on_gone(r, NULL, NULL);
	CNT_ADD(ep->home->active, -1);
	sink_reply(r, status, ctype, extra, body, len);
}

void member_reply_error(struct member *m, int status, const char *msg, const char *type, const char *extra)
{
	if (m->parent) {
		char *body = openai_error_json(msg, type, NULL, NULL);
		member_fail_part(m, status, "application/json", extra, body, strlen(body));
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

struct batch *batch_new(struct batch_home *home, unsigned cands, const char *key)
{
	struct batch *b = xcalloc(1, sizeof *b);
	b->id = ++home->next_id;
	b->home = home;
	b->cands = cands;
	DLIST_PUSH(home->all, b, aprev, anext);
	b->key = xstrdup(key);
	return b;
}

struct batch *batch_new_like(const struct batch *b)
{
	struct batch *nb = batch_new(b->home, b->cands, b->key);
	nb->auth = b->auth ? xstrdup(b->auth) : NULL;
	nb->embed = b->embed;
	return nb;
}

void batch_add(struct batch *b, struct member *m)
{
	if (b->nmembers == b->cap) {
		b->cap = b->cap ? b->cap * 2 : 8;
		b->members = xrealloc(b->members, b->cap * sizeof *b->members);
	}
	b->members[b->nmembers++] = m;
	b->nprompts += m->req.nprompts;
}

unsigned member_seqs(const struct member *m) { return m->req.nprompts * (m->req.n ? m->req.n : 1); }

void batch_release_seqs(struct batch *b)
{
	if (b->seqs_held > b->seqs_ended)
		upstream_seqs_end(b->up, b->seqs_held - b->seqs_ended);
	b->seqs_held = b->seqs_ended = 0;
}

void batch_free(struct batch *b)
{
	b->home->forget(b);
	DLIST_UNLINK(b->home->all, b, aprev, anext);
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

unsigned batch_alive_members(const struct batch *b)
{
	unsigned n = 0;
	for (unsigned i = 0; i < b->nmembers; i++)
		if (member_alive(b->members[i]))
			n++;
	return n;
}

void batch_reply_error(struct batch *b, int status, const char *msg, const char *type, const char *extra)
{
	for (unsigned i = 0; i < b->nmembers; i++)
		member_reply_error(b->members[i], status, msg, type, extra);
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
	if (b->call && batch_alive_members(b) == 0) {
		batch_free(b);
		return;
	}
	long ms = b->home->cfg->timeouts.sse_keepalive_ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(b->ka_timer, &tv);
}

void batch_keepalive(struct batch *b)
{
	long ka = b->home->cfg->timeouts.sse_keepalive_ms;
	if (ka <= 0)
		return;
	b->ka_timer = evtimer_new(b->home->base, ka_cb, b);
	struct timeval tv = tv_of_ms(ka);
	evtimer_add(b->ka_timer, &tv);
}

void batch_compact(struct batch *b)
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

/* The member's client left: a batch in flight whose clients have all left is freed, its upstream
 * call cancelled (contract 7). */
void member_gone_cb(void *arg)
{
	struct member *m = arg;
	struct batch_home *h = m->home;
	m->client = NULL;
	if (!m->answered) {
		m->answered = true;
		CNT_ADD(h->active, -1);
	}
	CNT_ADD(h->st.gone, 1);
	struct batch *b = m->sm.batch;
	if (!b)
		return;
	if (b->split_ready)
		split_member_gone(&b->sp, &m->sm);
	if (b->sent && b->call && batch_alive_members(b) == 0) {
		log_info("batch %llu: every client left; cancelling the upstream call", (unsigned long long)b->id);
		batch_free(b);
	}
}

void member_parent_gone_cb(void *arg)
{
	struct member_parent *ep = arg;
	struct batch_home *h = ep->home;
	ep->client = NULL;
	CNT_ADD(h->active, -1);
	CNT_ADD(h->st.gone, 1);
	/* a call in flight whose clients have all left is cancelled (contract 7) */
	for (struct batch *b = h->all, *next; b; b = next) {
		next = b->anext;
		if (b->embed && b->call && batch_alive_members(b) == 0)
			batch_free(b);
	}
}

