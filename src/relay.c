/* relay: one batch queue for all workers; see relay.h. */
#include "carpool/relay.h"
#include "carpool/batcher.h"
#include "carpool/intake.h"
#include "carpool/sink.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

enum relay_op {
	OP_SUBMIT, /* worker -> dispatcher: payload is a struct handoff pointer */
	OP_GONE,   /* worker -> dispatcher: the client left (or was dropped as too slow) */
	OP_START,  /* dispatcher -> worker: struct sink_note, content type, extra headers */
	OP_WRITE,  /* dispatcher -> worker: bytes of the stream */
	OP_END,	   /* dispatcher -> worker: struct sink_note */
	OP_REPLY,  /* dispatcher -> worker: struct sink_note, content type, extra headers, body */
	OP_ABORT,  /* dispatcher -> worker */
};

/* A message in an inbox; its payload follows, padded to 8 bytes. */
struct msg {
	uint64_t id;  /* the request: (worker << 48) | its number there */
	uint32_t len; /* payload bytes */
	uint16_t status;
	uint8_t op;
	uint8_t from;
};

/* What the access log of the client's worker needs from the batcher's stand-in: its sink note. */

struct handoff {
	struct intake_req req;
	unsigned cands;
	char *auth;
	bool embed;
};

/* The dispatcher's stand-in for another worker's client request; the sink comes first. */
struct standin {
	struct sink sink;
	struct relay *rl;
	int owner;
	uint64_t id;
};

/* A request this worker handed over: what its gone callback needs. */
struct ticket {
	struct relay *rl;
	struct sink *client;
	uint64_t id;
};

/* id -> pointer, open addressing (ids are never 0). */
struct idmap {
	uint64_t *keys;
	void **vals;
	size_t cap, n;
};

struct relay {
	int id;
	struct relay **peers; /* every worker's relay, by id */
	int npeers;
	struct batcher *bt;   /* the dispatcher's */
	pthread_mutex_t mu;   /* guards inbox */
	struct sbuf inbox;    /* messages from other workers */
	struct sbuf work;     /* the inbox taken over for processing */
	struct event *wake_ev;
	struct sbuf *out;     /* per peer: messages gathered this loop turn */
	struct event *flush_ev;
	bool flush_pending;
	struct idmap open;    /* worker: id -> ticket; dispatcher: id -> standin */
	uint64_t next;
};

/* --- id map --------------------------------------------------------------------------------- */

static size_t slot_of(const struct idmap *m, uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return (size_t)k & (m->cap - 1);
}

static void idmap_put(struct idmap *m, uint64_t k, void *v)
{
	if ((m->n + 1) * 2 > m->cap) {
		struct idmap g = {NULL, NULL, m->cap ? m->cap * 2 : 64, 0};
		g.keys = xcalloc(g.cap, sizeof *g.keys);
		g.vals = xcalloc(g.cap, sizeof *g.vals);
		for (size_t i = 0; i < m->cap; i++)
			if (m->keys[i])
				idmap_put(&g, m->keys[i], m->vals[i]);
		free(m->keys);
		free(m->vals);
		*m = g;
	}
	size_t i = slot_of(m, k);
	while (m->keys[i])
		i = (i + 1) & (m->cap - 1);
	m->keys[i] = k;
	m->vals[i] = v;
	m->n++;
}

static void *idmap_get(const struct idmap *m, uint64_t k)
{
	if (!m->cap)
		return NULL;
	for (size_t i = slot_of(m, k); m->keys[i]; i = (i + 1) & (m->cap - 1))
		if (m->keys[i] == k)
			return m->vals[i];
	return NULL;
}

/* Removes k; returns its value or NULL. Later entries of the probe run shift back into the gap. */
static void *idmap_take(struct idmap *m, uint64_t k)
{
	if (!m->cap)
		return NULL;
	size_t mask = m->cap - 1, i = slot_of(m, k);
	while (m->keys[i] && m->keys[i] != k)
		i = (i + 1) & mask;
	if (!m->keys[i])
		return NULL;
	void *v = m->vals[i];
	m->n--;
	for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
		size_t home = slot_of(m, m->keys[j]);
		/* entry j may fill the gap at i unless its home lies cyclically in (i, j] */
		if (((j - home) & mask) >= ((j - i) & mask)) {
			m->keys[i] = m->keys[j];
			m->vals[i] = m->vals[j];
			i = j;
		}
	}
	m->keys[i] = 0;
	m->vals[i] = NULL;
	return v;
}

/* --- messages --------------------------------------------------------------------------------- */

/* Appends a message for worker `to` to this turn's batch; the loop hands it over at the turn's end. */
static void post(struct relay *rl, int to, enum relay_op op, uint64_t id, int status, const struct iovec *parts,
		 int nparts)
{
	struct sbuf *o = &rl->out[to];
	struct msg h = {.id = id, .status = (uint16_t)status, .op = (uint8_t)op, .from = (uint8_t)rl->id};
	for (int i = 0; i < nparts; i++)
		h.len += (uint32_t)parts[i].iov_len;
	sbuf_reserve(o, sizeof h + h.len + 8);
	sbuf_add(o, &h, sizeof h);
	for (int i = 0; i < nparts; i++)
		sbuf_add(o, parts[i].iov_base, parts[i].iov_len);
	static const char pad[8];
	sbuf_add(o, pad, (8 - h.len % 8) % 8);
	if (!rl->flush_pending) {
		rl->flush_pending = true;
		event_active(rl->flush_ev, 0, 0);
	}
}

void relay_flush(struct relay *rl)
{
	rl->flush_pending = false;
	for (int p = 0; p < rl->npeers; p++) {
		struct sbuf *o = &rl->out[p];
		if (!o->len)
			continue;
		struct relay *to = rl->peers[p];
		pthread_mutex_lock(&to->mu);
		bool was_empty = to->inbox.len == 0;
		if (was_empty) { /* the common case: hand the whole buffer over, no copy */
			struct sbuf t = to->inbox;
			to->inbox = *o;
			*o = t;
		} else {
			sbuf_add(&to->inbox, o->data, o->len);
		}
		pthread_mutex_unlock(&to->mu);
		if (was_empty)
			event_active(to->wake_ev, 0, 0);
		sbuf_reset(o);
	}
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	relay_flush(arg);
}

/* --- the client's worker ------------------------------------------------------------------------ */

static void client_gone(void *arg)
{
	struct ticket *t = arg;
	struct relay *rl = t->rl;
	idmap_take(&rl->open, t->id);
	post(rl, 0, OP_GONE, t->id, 0, NULL, 0);
	free(t);
}

void relay_submit(struct relay *rl, struct sink *client, struct intake_req *req, unsigned cands, const char *auth,
		  bool embed)
{
	struct handoff *h = xcalloc(1, sizeof *h);
	h->req = *req;
	memset(req, 0, sizeof *req);
	h->cands = cands;
	h->auth = auth ? xstrdup(auth) : NULL;
	h->embed = embed;
	struct ticket *t = xcalloc(1, sizeof *t);
	t->rl = rl;
	t->client = client;
	t->id = ((uint64_t)rl->id << 48) | ++rl->next;
	idmap_put(&rl->open, t->id, t);
	sink_on_gone(client, client_gone, t);
	struct iovec part = {&h, sizeof h};
	post(rl, 0, OP_SUBMIT, t->id, 0, &part, 1);
}

static void take_note(struct sink *r, const char **p)
{
	memcpy(&r->note, *p, sizeof r->note);
	*p += sizeof r->note;
}

/* A NUL-terminated string of the payload; "" stands for NULL. */
static const char *take_str(const char **p)
{
	const char *s = *p;
	*p += strlen(s) + 1;
	return s[0] ? s : NULL;
}

/* Applies one action of the dispatcher's batcher to the client request it concerns, if it is still here. */
static void apply(struct relay *rl, const struct msg *h, const char *p)
{
	struct ticket *t = idmap_get(&rl->open, h->id);
	if (!t)
		return; /* the client left; the dispatcher hears it (OP_GONE) */
	struct sink *r = t->client;
	const char *end = p + h->len;
	if (h->op != OP_WRITE && h->op != OP_START) {
		idmap_take(&rl->open, h->id); /* the request ends here */
		sink_on_gone(r, NULL, NULL);
		free(t);
	}
	switch ((enum relay_op)h->op) {
	case OP_START: {
		take_note(r, &p);
		const char *ctype = take_str(&p);
		const char *extra = take_str(&p);
		sink_start(r, h->status, ctype, extra);
		break;
	}
	case OP_WRITE: /* a client dropped as too slow is heard of from its gone callback (client_gone) */
		sink_write(r, p, h->len);
		break;
	case OP_END:
		take_note(r, &p);
		sink_end(r);
		break;
	case OP_REPLY: {
		take_note(r, &p);
		const char *ctype = take_str(&p);
		const char *extra = take_str(&p);
		sink_reply(r, h->status, ctype, extra, p, (size_t)(end - p));
		break;
	}
	case OP_ABORT:
		sink_abort(r);
		break;
	default:
		break;
	}
}

/* --- the dispatcher -------------------------------------------------------------------------- */

static void standin_free(struct standin *s, struct relay *rl)
{
	idmap_take(&rl->open, s->id);
	free(s);
}

static const struct sink_ops standin_ops;

static void take_submit(struct relay *rl, const struct msg *h, const char *p)
{
	struct handoff *ho;
	memcpy(&ho, p, sizeof ho);
	struct standin *s = xcalloc(1, sizeof *s);
	s->sink.ops = &standin_ops;
	s->rl = rl;
	s->owner = h->from;
	s->id = h->id;
	idmap_put(&rl->open, s->id, s);
	if (ho->embed)
		batcher_submit_embed(rl->bt, &s->sink, &ho->req, ho->cands, ho->auth);
	else
		batcher_submit(rl->bt, &s->sink, &ho->req, ho->cands, ho->auth);
	intake_free(&ho->req);
	free(ho->auth);
	free(ho);
}

static void take_gone(struct relay *rl, const struct msg *h)
{
	struct standin *s = idmap_take(&rl->open, h->id);
	if (!s)
		return; /* already answered */
	if (s->sink.gone_cb)
		s->sink.gone_cb(s->sink.gone_arg);
	free(s);
}

/* The stand-in's sink operations: each action travels to the client's worker; after end, reply and
 * abort the stand-in is freed. */
static void standin_start(struct sink *r, int status, const char *ctype, const char *extra)
{
	struct standin *s = (struct standin *)r;
	ctype = ctype ? ctype : "";
	extra = extra ? extra : "";
	struct iovec parts[3] = {{&r->note, sizeof r->note},
				 {(void *)ctype, strlen(ctype) + 1},
				 {(void *)extra, strlen(extra) + 1}};
	post(s->rl, s->owner, OP_START, s->id, status, parts, 3);
}

/* A client too slow for its worker is dropped there; the gone callback tells. */
static void standin_write(struct sink *r, const char *data, size_t len)
{
	struct standin *s = (struct standin *)r;
	if (!len)
		return;
	struct iovec part = {(void *)data, len};
	post(s->rl, s->owner, OP_WRITE, s->id, 0, &part, 1);
}

static void standin_end(struct sink *r)
{
	struct standin *s = (struct standin *)r;
	struct iovec part = {&r->note, sizeof r->note};
	post(s->rl, s->owner, OP_END, s->id, 0, &part, 1);
	standin_free(s, s->rl);
}

static void standin_reply(struct sink *r, int status, const char *ctype, const char *extra, const char *body,
			  size_t len)
{
	struct standin *s = (struct standin *)r;
	ctype = ctype ? ctype : "";
	extra = extra ? extra : "";
	struct iovec parts[4] = {{&r->note, sizeof r->note},
				 {(void *)ctype, strlen(ctype) + 1},
				 {(void *)extra, strlen(extra) + 1},
				 {(void *)body, len}};
	post(s->rl, s->owner, OP_REPLY, s->id, status, parts, 4);
	standin_free(s, s->rl);
}

static void standin_abort(struct sink *r)
{
	struct standin *s = (struct standin *)r;
	post(s->rl, s->owner, OP_ABORT, s->id, 0, NULL, 0);
	standin_free(s, s->rl);
}

static const struct sink_ops standin_ops = {
	.start = standin_start, .write = standin_write, .end = standin_end, .reply = standin_reply,
	.abort = standin_abort,
};

/* --- both ------------------------------------------------------------------------------------ */

/* Another worker handed messages over: take the whole inbox and act on each, in order. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct relay *rl = arg;
	pthread_mutex_lock(&rl->mu);
	struct sbuf t = rl->inbox;
	rl->inbox = rl->work;
	rl->work = t;
	pthread_mutex_unlock(&rl->mu);
	for (size_t off = 0; off + sizeof(struct msg) <= rl->work.len;) {
		struct msg h;
		memcpy(&h, rl->work.data + off, sizeof h);
		const char *p = rl->work.data + off + sizeof h;
		off += sizeof h + h.len + (8 - h.len % 8) % 8;
		if (h.op == OP_SUBMIT)
			take_submit(rl, &h, p);
		else if (h.op == OP_GONE)
			take_gone(rl, &h);
		else
			apply(rl, &h, p);
	}
	sbuf_reset(&rl->work);
}

struct relay *relay_new(struct event_base *base, int id)
{
	struct relay *rl = xcalloc(1, sizeof *rl);
	rl->id = id;
	pthread_mutex_init(&rl->mu, NULL);
	rl->wake_ev = event_new(base, -1, 0, wake_cb, rl);
	rl->flush_ev = event_new(base, -1, 0, flush_cb, rl);
	return rl;
}

void relay_link(struct relay *rl, struct relay *const *all, int n, struct batcher *bt)
{
	rl->peers = xcalloc((size_t)n, sizeof *rl->peers);
	memcpy(rl->peers, all, (size_t)n * sizeof *all);
	rl->npeers = n;
	rl->out = xcalloc((size_t)n, sizeof *rl->out);
	rl->bt = bt;
}

unsigned relay_open_count(const struct relay *rl) { return (unsigned)rl->open.n; }

/* Frees what a message still owns (a handoff that never reached the batcher). */
static void drop_messages(struct sbuf *b)
{
	for (size_t off = 0; off + sizeof(struct msg) <= b->len;) {
		struct msg h;
		memcpy(&h, b->data + off, sizeof h);
		if (h.op == OP_SUBMIT) {
			struct handoff *ho;
			memcpy(&ho, b->data + off + sizeof h, sizeof ho);
			intake_free(&ho->req);
			free(ho->auth);
			free(ho);
		}
		off += sizeof h + h.len + (8 - h.len % 8) % 8;
	}
	sbuf_free(b);
}

void relay_free(struct relay *rl)
{
	if (!rl)
		return;
	for (size_t i = 0; i < rl->open.cap; i++)
		free(rl->open.vals[i]); /* tickets, or stand-ins the batcher no longer holds */
	free(rl->open.keys);
	free(rl->open.vals);
	drop_messages(&rl->inbox);
	drop_messages(&rl->work);
	for (int p = 0; p < rl->npeers; p++)
		drop_messages(&rl->out[p]);
	free(rl->out);
	free(rl->peers);
	event_free(rl->wake_ev);
	event_free(rl->flush_ev);
	pthread_mutex_destroy(&rl->mu);
	free(rl);
}
