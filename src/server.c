/* server: listeners, client connections and a bounded HTTP/1.1 request parser. */
#include "carpool/server.h"
#include "carpool/http.h"
#include "carpool/metrics.h"

#include <ctype.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <cjson/cJSON.h>
#include <unistd.h>

#define STAGE_MAX 65536 /* staged bytes of one client that are sent at once, mid-turn */
#define RING_ENTRIES 256 /* io_uring: sends submitted with one system call at most */
#define SLOW_MS 1000	/* how long a client's unread output may stay over max_client_buffer */

enum conn_state { ST_HEADERS, ST_BODY, ST_CHUNKED, ST_HANDLING, ST_CLOSING };

struct listener {
	struct evconnlistener *lev;
	long serve; /* enum listen_serve */
	struct event *rearm_ev; /* shared accept: listens again after this loop turn */
	SSL_CTX *ssl;
	char unix_path[CFG_STR];
	struct server *srv;
};

struct server {
	struct event_base *base;
	const struct config *cfg;
	server_handler handler;
	server_head_check head_check;
	void *arg;
	struct listener listeners[CFG_MAX_LISTEN];
	int nlisteners;
	unsigned nconns;
	FILE *access;	    /* the access log, or NULL */
	struct metrics *metrics;
	int worker;	    /* the worker's id, for the access log */
	bool one_accept;    /* the listening sockets are shared: one accept per wake-up */
	bool access_owned;  /* opened by us (a file), closed at the end */
	struct conn *conns; /* every open connection, so that shutdown frees them */
	struct conn *dirty; /* connections with answer bytes staged this loop turn */
	struct conn *dropped; /* clients dropped as too slow this loop turn, freed at its end */
	struct event *flush_ev;
	/* io_uring (one ring per worker, used by its loop alone): the turn's client writes are submitted
	 * together, one system call for all, in flush_cb. */
	struct io_uring ring;
	bool uring;
	int spare_fd;	    /* held back, so that a 503 can still be sent when descriptors run out */
	struct log_every refused_log, exhausted_log, loop_log;
};

struct conn {
	struct server *srv;
	struct conn *prev, *next;
	struct bufferevent *bev;
	enum conn_state state;
	struct creq *req;
	struct http_head head;	  /* ST_HEADERS: the request head being read */
	struct http_chunked chunk; /* ST_CHUNKED */
	size_t body_left;	  /* ST_BODY */
	uint64_t t_head;	  /* when the head being read began (its first byte, or the accept) */
	struct event *deadline;	  /* the whole head, then the whole body, must arrive before it fires */
	bool lingering;   /* our side is shut; draining until the peer closes */
	long serve;	  /* the listener's enum listen_serve */
	bool tls;
	/* Answer bytes staged during this loop turn, sent with one write at its end (flush_cb):
	 * however many events of a client arrive in one turn, it costs one system call. */
	struct sbuf pend;
	bool in_dirty;
	bool ringed;	 /* pend was sent through the ring this turn: ring_res is what the socket said */
	int ring_res;	 /* bytes taken, or -errno */
	bool dropped;		    /* on srv->dropped: nothing more is sent; freed at the turn's end */
	struct conn *dnext, *dprev; /* on srv->dirty or srv->dropped */
	uint64_t over_since; /* when its unread output went over max_client_buffer, or 0 */
	char peer[64];
};

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);
static void conn_write_cb(struct bufferevent *bev, void *arg);
static void refuse(struct conn *c, int status, const char *message);
static const char *http_date_now(void);

/* Counts the request in the metrics: route and status, times, streams. */
static void observe_end(struct conn *c, struct creq *r, bool gone)
{
	struct metrics *m = c->srv->metrics;
	if (!m || !r->path)
		return;
	int status = gone && !r->finished ? 499 : r->status;
	if (status >= 100 && status < 600)
		CNT_ADD(m->requests[metrics_route_of(r->path)][status], 1);
	uint64_t now = now_us();
	metrics_observe_ms(&m->duration_seconds, (double)(now - r->t_start) / 1000.0);
	if (r->t_first)
		metrics_observe_ms(&m->ttft_seconds, (double)(r->t_first - r->t_start) / 1000.0);
	if (r->chunked)
		CNT_ADD(m->streams_ended_total, 1);
}

void server_set_metrics(struct server *s, struct metrics *m)
{
	s->metrics = m;
	CNT_SET(m->io_uring, s->uring);
}
void server_set_worker(struct server *s, int id) { s->worker = id; }
void server_set_head_check(struct server *s, server_head_check check) { s->head_check = check; }

/* One JSON line per client request (and its count in the metrics). */
static void access_log(struct conn *c, struct creq *r, bool gone)
{
	observe_end(c, r, gone);
	FILE *f = c->srv->access;
	if (!f || !r->path)
		return;
	uint64_t now = now_us();
	cJSON *j = cJSON_CreateObject();
	char t[48];
	utc_now(t, sizeof t);
	cJSON_AddStringToObject(j, "time", t);
	cJSON_AddStringToObject(j, "client", r->peer);
	cJSON_AddStringToObject(j, "request_id", r->id);
	if (r->trace_id[0])
		cJSON_AddStringToObject(j, "trace_id", r->trace_id);
	if (r->key_name[0])
		cJSON_AddStringToObject(j, "key", r->key_name);
	cJSON_AddStringToObject(j, "method", r->method);
	cJSON_AddStringToObject(j, "route", r->path);
	cJSON_AddNumberToObject(j, "worker", c->srv->worker);
	cJSON_AddNumberToObject(j, "status", gone && !r->finished ? 499 : r->status);
	if (r->sink.note.prompts)
		cJSON_AddNumberToObject(j, "prompts", r->sink.note.prompts);
	if (r->sink.note.batch_id) {
		cJSON_AddNumberToObject(j, "batch", (double)r->sink.note.batch_id);
		cJSON_AddNumberToObject(j, "batch_size", r->sink.note.batch_size);
		cJSON_AddNumberToObject(j, "queue_ms", (double)r->sink.note.queue_us / 1000.0);
	}
	if (r->t_first)
		cJSON_AddNumberToObject(j, "ttft_ms", (double)(r->t_first - r->t_start) / 1000.0);
	cJSON_AddNumberToObject(j, "duration_ms", (double)(now - r->t_start) / 1000.0);
	cJSON_AddNumberToObject(j, "bytes", (double)r->bytes);
	if (r->sink.note.upstream)
		cJSON_AddStringToObject(j, "upstream", r->sink.note.upstream);
	if (gone && !r->finished)
		cJSON_AddTrueToObject(j, "client_gone");
	char *line = cJSON_PrintUnformatted(j);
	fprintf(f, "%s\n", line);
	fflush(f);
	free(line);
	cJSON_Delete(j);
}

static void creq_free(struct creq *r)
{
	if (!r)
		return;
	if (r->end_cb)
		r->end_cb(r->end_arg);
	free(r->target);
	free(r->path);
	for (size_t i = 0; i < r->nheaders; i++) {
		free(r->headers[i].name);
		free(r->headers[i].value);
	}
	free(r->headers);
	sbuf_free(&r->body);
	free(r);
}

static void conn_free(struct conn *c)
{
	if (c->req) {
		struct creq *r = c->req;
		c->req = NULL;
		if (!r->finished && r->sink.gone_cb)
			r->sink.gone_cb(r->sink.gone_arg);
		if (!r->finished && (r->started || c->state == ST_HANDLING))
			access_log(c, r, true);
		creq_free(r);
	}
	if (c->in_dirty)
		DLIST_UNLINK(c->srv->dirty, c, dprev, dnext);
	else if (c->dropped)
		DLIST_UNLINK(c->srv->dropped, c, dprev, dnext);
	sbuf_free(&c->pend);
	http_head_free(&c->head);
	if (c->deadline)
		event_free(c->deadline);
	if (c->bev)
		bufferevent_free(c->bev);
	DLIST_UNLINK(c->srv->conns, c, prev, next);
	c->srv->nconns--;
	free(c);
}

/* Output is out: shut our side and drain what the peer still sends (so that a refused upload sees
 * our answer instead of a reset), then free on its EOF or after a short linger. */
static void conn_linger(struct conn *c)
{
	evutil_socket_t fd = bufferevent_getfd(c->bev);
	if (c->lingering)
		return;
	if (c->tls || fd < 0) {
		conn_free(c);
		return;
	}
	c->lingering = true;
	shutdown(fd, SHUT_WR);
	struct timeval tv = {2, 0};
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	bufferevent_enable(c->bev, EV_READ);
}

/* Closes after the output has drained. */
static void conn_close_after_write(struct conn *c)
{
	c->state = ST_CLOSING;
	if (!c->pend.len && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_linger(c);
}

/* Of len bytes, done went out: the rest waits in the bufferevent's output buffer, which the loop
 * drains (a send error other than EAGAIN surfaces on the bufferevent's own next write or read). */
static void conn_queue_rest(struct conn *c, const char *data, size_t len, size_t done)
{
	if (done < len)
		evbuffer_add(bufferevent_get_output(c->bev), data + done, len - done);
}

/* Can bytes go straight to the socket? Not on TLS, and not while older ones wait in the output buffer. */
static bool conn_direct(struct conn *c)
{
	return !c->tls && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0;
}

/* Sends bytes to the client: straight to the socket with one write when nothing is queued before
 * them (no event re-arming on the hot path), else - and for what the socket does not take now, and
 * on TLS - through the bufferevent's output buffer, which the loop drains. */
static void conn_send(struct conn *c, const char *data, size_t len)
{
	size_t done = 0;
	if (conn_direct(c)) {
		ssize_t w = send(bufferevent_getfd(c->bev), data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (c->srv->metrics)
			CNT_ADD(c->srv->metrics->client_writes_total, 1);
		if (w > 0)
			done = (size_t)w;
	}
	conn_queue_rest(c, data, len, done);
}

/* Sends what c has staged (or, when the ring sent it this turn, queues what the socket left). */
static void conn_flush(struct conn *c)
{
	if (c->pend.len) {
		if (c->ringed)
			conn_queue_rest(c, c->pend.data, c->pend.len, c->ring_res > 0 ? (size_t)c->ring_res : 0);
		else
			conn_send(c, c->pend.data, c->pend.len);
		sbuf_reset(&c->pend);
		if (c->pend.cap > STAGE_MAX) /* a burst does not pin its buffer for the life of the connection */
			sbuf_free(&c->pend);
	}
	c->ringed = false;
	if (c->state == ST_CLOSING && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_linger(c);
}

/* Submits the ring's sends (n of them) with one system call and notes what each socket took. Each
 * completes within the call: MSG_DONTWAIT makes a full socket answer -EAGAIN at once rather than
 * wait (ring_start checked that this kernel does). Should the submission itself fail, the ring is
 * given up for send(): what it did not send stays staged (ring_res 0) and leaves by the output buffer. */
static void ring_submit(struct server *srv, unsigned n)
{
	if (!n)
		return;
	/* wait for what was submitted, not for n: a kernel without SUBMIT_ALL stops at a failing entry */
	int rc = io_uring_submit(&srv->ring), w = 0;
	struct io_uring_cqe *cqe;
	if (rc > 0)
		do
			w = io_uring_wait_cqe_nr(&srv->ring, &cqe, (unsigned)rc);
		while (w == -EINTR);
	if (srv->metrics)
		CNT_ADD(srv->metrics->client_write_submits_total, 1);
	unsigned head, seen = 0;
	io_uring_for_each_cqe(&srv->ring, head, cqe) {
		struct conn *c = io_uring_cqe_get_data(cqe);
		c->ring_res = cqe->res;
		seen++;
	}
	io_uring_cq_advance(&srv->ring, seen);
	if (rc == (int)n && seen == n)
		return;
	log_error("io_uring: a submission of %u client writes failed (%s, %u done): client writes use send() from now on",
		  n, rc < 0 ? strerror(-rc) : w < 0 ? strerror(-w) : "not all submitted", seen);
	io_uring_queue_exit(&srv->ring); /* drops whatever was not submitted */
	srv->uring = false;
	if (srv->metrics)
		CNT_SET(srv->metrics->io_uring, false);
}

/* io_uring: one send for each staged client that can take bytes straight (conn_direct), all
 * submitted together; the list is walked again by flush_cb, which queues what each socket left. */
static void ring_flush(struct server *srv)
{
	unsigned n = 0;
	for (struct conn *c = srv->dirty; c; c = c->dnext) {
		if (!c->pend.len || !conn_direct(c))
			continue;
		struct io_uring_sqe *sqe = io_uring_get_sqe(&srv->ring);
		if (!sqe) { /* the ring is full: these go now */
			ring_submit(srv, n);
			n = 0;
			if (!srv->uring)
				return;
			sqe = io_uring_get_sqe(&srv->ring);
		}
		io_uring_prep_send(sqe, bufferevent_getfd(c->bev), c->pend.data, c->pend.len, MSG_NOSIGNAL | MSG_DONTWAIT);
		io_uring_sqe_set_data(sqe, c);
		c->ringed = true;
		c->ring_res = 0;
		n++;
		if (srv->metrics)
			CNT_ADD(srv->metrics->client_writes_total, 1);
	}
	ring_submit(srv, n);
}

/* The end of a loop turn (an event made active once per turn): the clients dropped during the
 * turn are freed (each owner told once, by its gone callback), then one write per staged client
 * (with io_uring, one system call for all of them). */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct server *srv = arg;
	struct conn *c;
	while ((c = srv->dropped))
		conn_free(c); /* unlinks it; its owner's gone callback may stage other clients' bytes */
	if (srv->uring)
		ring_flush(srv);
	while ((c = srv->dirty)) {
		DLIST_UNLINK(srv->dirty, c, dprev, dnext);
		c->in_dirty = false;
		conn_flush(c); /* may free c: it is off the list already */
	}
}

/* Stages bytes of the answer; they leave at the end of this loop turn, with whatever else the
 * client gets in the same turn. hold: do not schedule the write yet (the caller stages more of the
 * same answer at once). */
static void conn_stage(struct conn *c, const void *data, size_t len, bool hold)
{
	if (c->dropped)
		return;
	sbuf_add(&c->pend, data, len);
	if (hold || c->in_dirty)
		return;
	struct server *srv = c->srv;
	c->in_dirty = true;
	if (!srv->dirty)
		event_active(srv->flush_ev, 0, 0);
	DLIST_PUSH(srv->dirty, c, dprev, dnext);
}

static void set_header_timeout(struct conn *c)
{
	long ms = c->srv->cfg->timeouts.client_idle_ms;
	struct timeval tv = tv_of_ms(ms);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
}

/* While a response is being produced there is no read timeout: streams may run long. */
static void set_handling_timeout(struct conn *c)
{
	long ms = c->srv->cfg->timeouts.client_idle_ms;
	struct timeval tv = tv_of_ms(ms);
	bufferevent_set_timeouts(c->bev, NULL, &tv);
}

const char *creq_header(const struct creq *r, const char *name)
{
	for (size_t i = 0; i < r->nheaders; i++)
		if (!strcasecmp(r->headers[i].name, name))
			return r->headers[i].value;
	return NULL;
}

void creq_on_end(struct creq *r, void (*cb)(void *arg), void *arg)
{
	r->end_cb = cb;
	r->end_arg = arg;
}

void creq_on_gone(struct creq *r, void (*cb)(void *arg), void *arg)
{
	r->sink.gone_cb = cb;
	r->sink.gone_arg = arg;
}

static void write_head(struct creq *r, int status, const char *ctype, const char *extra, long content_length)
{
	struct sbuf *out = &r->conn->pend;
	if (r->conn->state != ST_HANDLING) /* the rest of the request is not read: its framing is lost */
		r->keepalive = false;
	sbuf_adds(out, "HTTP/1.1 ");
	sbuf_addll(out, status);
	sbuf_add(out, " ", 1);
	sbuf_adds(out, http_reason(status));
	sbuf_adds(out, "\r\nServer: carpool\r\nDate: ");
	sbuf_adds(out, http_date_now());
	sbuf_adds(out, "\r\nX-Request-Id: ");
	sbuf_adds(out, r->id);
	sbuf_add(out, "\r\n", 2);
	if (ctype) {
		sbuf_adds(out, "Content-Type: ");
		sbuf_adds(out, ctype);
		sbuf_add(out, "\r\n", 2);
	}
	if (content_length >= 0) {
		sbuf_adds(out, "Content-Length: ");
		sbuf_addll(out, content_length);
		sbuf_add(out, "\r\n", 2);
	} else
		sbuf_adds(out, "Transfer-Encoding: chunked\r\n");
	sbuf_adds(out, r->keepalive ? "Connection: keep-alive\r\n" : "Connection: close\r\n");
	if (extra)
		sbuf_adds(out, extra);
	/* the blank line is staged by the caller, with or without scheduling the write */
	r->started = true;
	r->status = status;
}

/* The response is complete: next request or close. */
static void finish(struct creq *r)
{
	struct conn *c = r->conn;
	r->finished = true;
	c->req = NULL;
	access_log(c, r, false);
	bool keep = r->keepalive;
	creq_free(r);
	if (!keep || c->state != ST_HANDLING) { /* answered before the request was read whole: close */
		conn_close_after_write(c);
		return;
	}
	c->state = ST_HEADERS;
	c->t_head = 0; /* the next head's deadline starts with its first byte */
	set_header_timeout(c);
	bufferevent_enable(c->bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_input(c->bev)))
		bufferevent_trigger(c->bev, EV_READ, BEV_TRIG_IGNORE_WATERMARKS | BEV_TRIG_DEFER_CALLBACKS);
}

/* A client dropped as too slow hears nothing more; the owner that ends its request is done with it
 * (no gone callback), and the connection is freed at the end of the turn. */
static bool dropped(struct creq *r)
{
	if (!r->conn->dropped)
		return false;
	r->sink.gone_cb = NULL;
	return true;
}

void creq_reply(struct creq *r, int status, const char *ctype, const char *extra, const char *body, size_t len)
{
	if (dropped(r))
		return;
	struct sbuf tagged = {0};
	if (status >= 400 && len > 10 && !memcmp(body, "{\"error\":{", 10) && body[len - 1] == '}') {
		/* an OpenAI error object gets the request id beside "error" (the id needs no escaping) */
		sbuf_add(&tagged, body, len - 1);
		sbuf_printf(&tagged, ",\"request_id\":\"%s\"}", r->id);
		body = tagged.data;
		len = tagged.len;
	}
	write_head(r, status, ctype, extra, (long)len);
	conn_stage(r->conn, "\r\n", 2, len > 0);
	if (len)
		conn_stage(r->conn, body, len, false);
	r->bytes += len;
	if (!r->t_first)
		r->t_first = now_us();
	finish(r);
	sbuf_free(&tagged);
}

void creq_reply_error(struct creq *r, int status, const char *message, const char *type, const char *param,
		      const char *code)
{
	char *body = openai_error_json(message, type, param, code);
	creq_reply(r, status, "application/json", NULL, body, strlen(body));
	free(body);
}

void creq_stream_start(struct creq *r, int status, const char *ctype, const char *extra)
{
	if (r->conn->dropped)
		return;
	write_head(r, status, ctype, extra, -1);
	r->sse = ctype && !strncasecmp(ctype, "text/event-stream", 17);
	/* out at the end of this loop turn (with the first event if it came in the same read): a client
	 * knows its request was taken as soon as the upstream answered */
	conn_stage(r->conn, "\r\n", 2, false);
	r->chunked = true;
	if (r->conn->srv->metrics)
		CNT_ADD(r->conn->srv->metrics->streams_started_total, 1);
}

/* Whether c's unread output (what the socket did not take; staged bytes have not been offered yet)
 * has been over max_client_buffer for SLOW_MS, or is over four times it now. A reader that keeps up
 * is not dropped for one burst larger than the bound; a stalled one is, and memory stays bounded. */
static bool client_too_slow(struct conn *c)
{
	size_t unread = evbuffer_get_length(bufferevent_get_output(c->bev));
	size_t max = (size_t)c->srv->cfg->limits.max_client_buffer;
	if (unread <= max) {
		c->over_since = 0;
		return false;
	}
	uint64_t now = now_us();
	if (!c->over_since)
		c->over_since = now;
	if (unread <= 4 * max && now - c->over_since < SLOW_MS * 1000)
		return false;
	log_warn("client %s reads too slowly: %zu bytes unread (over %zu for %llu ms), dropping it", c->peer, unread,
		 max, (unsigned long long)((now - c->over_since) / 1000));
	return true;
}

/* Drops a client too slow: marked, taken off the write list, sent nothing more; freed (and its
 * owner's gone callback made) at the end of this loop turn, never under the writer's feet. */
static void conn_drop(struct conn *c)
{
	struct server *srv = c->srv;
	if (srv->metrics)
		CNT_ADD(srv->metrics->slow_clients_dropped_total, 1);
	if (c->in_dirty) {
		DLIST_UNLINK(srv->dirty, c, dprev, dnext);
		c->in_dirty = false;
	}
	c->dropped = true;
	sbuf_reset(&c->pend);
	bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	DLIST_PUSH(srv->dropped, c, dprev, dnext);
	event_active(srv->flush_ev, 0, 0);
}

void creq_stream_write(struct creq *r, const char *data, size_t len)
{
	struct conn *c = r->conn;
	if (c->dropped)
		return;
	if (client_too_slow(c)) {
		conn_drop(c);
		return;
	}
	if (!len)
		return;
	r->bytes += len;
	if (!r->t_first && (len < 1 || data[0] != ':'))
		r->t_first = now_us();
	char head[24];
	int hl = 0;
	char hex[16];
	int nh = 0;
	for (size_t x = len; x; x >>= 4)
		hex[nh++] = "0123456789abcdef"[x & 15];
	while (nh)
		head[hl++] = hex[--nh];
	head[hl++] = '\r';
	head[hl++] = '\n';
	sbuf_reserve(&c->pend, (size_t)hl + len + 2);
	sbuf_add(&c->pend, head, (size_t)hl);
	sbuf_add(&c->pend, data, len);
	conn_stage(c, "\r\n", 2, false);
	if (c->pend.len >= STAGE_MAX) /* a burst: offer it now rather than grow the stage */
		conn_flush(c);
}

void creq_abort(struct creq *r)
{
	if (dropped(r))
		return;
	r->sink.gone_cb = NULL;
	conn_free(r->conn);
}

void creq_stream_end(struct creq *r)
{
	if (dropped(r))
		return;
	conn_stage(r->conn, "0\r\n\r\n", 5, false);
	finish(r);
}

/* The sink of a local client (sink.h): the creq functions above. */
static void sink_start_cb(struct sink *s, int status, const char *ctype, const char *extra)
{
	creq_stream_start((struct creq *)s, status, ctype, extra);
}

static void sink_write_cb(struct sink *s, const char *data, size_t len)
{
	creq_stream_write((struct creq *)s, data, len);
}

static void sink_end_cb(struct sink *s) { creq_stream_end((struct creq *)s); }

static void sink_reply_cb(struct sink *s, int status, const char *ctype, const char *extra, const char *body,
			  size_t len)
{
	creq_reply((struct creq *)s, status, ctype, extra, body, len);
}

static void sink_abort_cb(struct sink *s) { creq_abort((struct creq *)s); }

static const struct sink_ops creq_sink_ops = {
	.start = sink_start_cb, .write = sink_write_cb, .end = sink_end_cb, .reply = sink_reply_cb, .abort = sink_abort_cb,
};

/* "Mon, 30 Nov 2026 11:20:38 GMT" (RFC 9110 IMF-fixdate), formatted once a second per thread. */
static const char *http_date_now(void)
{
	static __thread time_t sec;
	static __thread char buf[32];
	time_t now = time(NULL);
	if (now != sec) {
		static const char days[][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
		static const char months[][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
						 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
		struct tm tm;
		gmtime_r(&now, &tm);
		snprintf(buf, sizeof buf, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday], tm.tm_mday,
			 months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
		sec = now;
	}
	return buf;
}

/* A client's X-Request-Id is kept when it is 1..CREQ_ID_MAX bytes of [A-Za-z0-9._:-]: safe in a
 * header, a JSON string and a log line as it is. */
static bool request_id_ok(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (n >= CREQ_ID_MAX || !(isalnum((unsigned char)s[n]) || strchr("._:-", s[n])))
			return false;
	return n > 0;
}

/* A made id: 32 hex digits, a random per-thread prefix and a counter (unique without a system call
 * per request). */
static void make_request_id(char *out)
{
	static __thread uint64_t prefix, seq;
	if (!prefix) {
		if (RAND_bytes((unsigned char *)&prefix, sizeof prefix) != 1 || !prefix)
			prefix = now_us() ^ (uint64_t)(uintptr_t)&prefix;
	}
	snprintf(out, CREQ_ID_MAX + 1, "%016llx%016llx", (unsigned long long)prefix, (unsigned long long)++seq);
}

/* The trace id of a W3C traceparent "VV-<32 hex>-<16 hex>-FF" into out[33], or "" when it is not one. */
static void trace_id_of(const char *tp, char *out)
{
	out[0] = '\0';
	if (!tp || strlen(tp) < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
		return;
	bool zero = true;
	for (int i = 3; i < 35; i++) {
		if (!isxdigit((unsigned char)tp[i]) || isupper((unsigned char)tp[i]))
			return;
		zero &= tp[i] == '0';
	}
	if (zero)
		return;
	memcpy(out, tp + 3, 32);
	out[32] = '\0';
}

/* A new request on c. */
static struct creq *creq_new(struct conn *c)
{
	struct creq *r = xcalloc(1, sizeof *r);
	r->sink.ops = &creq_sink_ops;
	r->conn = c;
	r->tls = c->tls;
	make_request_id(r->id);
	return r;
}

/* Refuses the request being read and closes the connection once the answer is out. */
static void refuse(struct conn *c, int status, const char *message)
{
	struct creq *r = c->req;
	if (!r) {
		r = creq_new(c);
		c->req = r;
	}
	r->keepalive = false;
	c->state = ST_CLOSING;
	creq_reply_error(r, status, message, "invalid_request_error", NULL, NULL);
}

static void dispatch_request(struct conn *c)
{
	c->state = ST_HANDLING;
	set_handling_timeout(c);
	c->srv->handler(c->req, c->srv->arg);
}

/* The deadline of the part of the request being read (its head, then its body) from now. */
static void arm_deadline(struct conn *c, long ms)
{
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(c->deadline, &tv);
}

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct conn *c = arg;
	if (c->state != ST_HEADERS && c->state != ST_BODY && c->state != ST_CHUNKED)
		return;
	if (c->state == ST_HEADERS && !c->head.buf.len) { /* nothing was sent: nobody to answer */
		conn_free(c);
		return;
	}
	log_debug("client %s: the request did not arrive in time", c->peer);
	refuse(c, 408, c->state == ST_HEADERS ? "Timed out reading the request head."
					      : "Timed out reading the request body.");
}

/* Methods carpool serves or forwards; any other is refused (501) without contacting an upstream. */
static bool known_method(const char *m)
{
	static const char *const ok[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS", NULL};
	for (int i = 0; ok[i]; i++)
		if (!strcmp(m, ok[i]))
			return true;
	return false;
}

/* The head is complete: the request is made from it (c->req) and the body's framing chosen.
 * CP_ERROR: it was refused (answered, and the connection closes). */
static int start_request(struct conn *c)
{
	struct http_head *h = &c->head;
	struct server *srv = c->srv;
	struct creq *r = creq_new(c);
	r->t_start = c->t_head;
	r->serve = c->serve;
	snprintf(r->peer, sizeof r->peer, "%s", c->peer);
	c->req = r;
	r->keepalive = h->keepalive;
	if (strlen(h->method) >= sizeof r->method || !known_method(h->method)) {
		refuse(c, 501, "Method not implemented.");
		return CP_ERROR;
	}
	strcpy(r->method, h->method);
	r->target = xstrdup(h->target);
	if (http_normalize_target(r->target) != CP_OK) {
		refuse(c, 400, "Invalid request target.");
		return CP_ERROR;
	}
	r->path = xstrndup(r->target, strcspn(r->target, "?"));
	r->headers = xcalloc(h->nfields ? h->nfields : 1, sizeof *r->headers);
	for (unsigned i = 0; i < h->nfields; i++) {
		r->headers[i].name = xstrdup(h->fields[i].name);
		r->headers[i].value = xstrdup(h->fields[i].value);
	}
	r->nheaders = h->nfields;
	const char *rid = creq_header(r, "X-Request-Id");
	if (rid && request_id_ok(rid))
		strcpy(r->id, rid);
	trace_id_of(creq_header(r, "traceparent"), r->trace_id);
	const char *via = instance_via();
	for (size_t i = 0; i < r->nheaders; i++)
		if (!strcasecmp(r->headers[i].name, "Via") && strstr(r->headers[i].value, via + 4)) {
			log_every_second(&srv->loop_log, 1, LOG_ERROR,
					 "a request came back through this carpool (a proxy loop: an upstream URL "
					 "leads back to a listener); refused with 508");
			refuse(c, 508, "Proxy loop detected: the request already passed through this carpool.");
			return CP_ERROR;
		}
	size_t max = (size_t)srv->cfg->limits.max_body_bytes;
	if (h->body == HTTP_BODY_LENGTH && h->content_length > max) {
		char msg[128];
		snprintf(msg, sizeof msg, "The request body is %llu bytes; the limit is %zu bytes.",
			 (unsigned long long)h->content_length, max);
		refuse(c, 413, msg);
		return CP_ERROR;
	}
	c->body_left = h->body == HTTP_BODY_LENGTH ? (size_t)h->content_length : 0;
	c->state = h->body == HTTP_BODY_CHUNKED ? ST_CHUNKED : ST_BODY;
	if (c->state == ST_CHUNKED)
		http_chunked_init(&c->chunk, max, (size_t)srv->cfg->limits.max_header_bytes);
	bool expect = h->expect_continue;
	http_head_free(h);
	http_head_init(h, HTTP_REQUEST, (size_t)srv->cfg->limits.max_header_bytes);
	/* a request the handler refuses from its head alone (a bad key) is answered before its body */
	if (srv->head_check && !srv->head_check(r, srv->arg))
		return CP_ERROR;
	if (c->state == ST_CHUNKED || c->body_left) {
		arm_deadline(c, srv->cfg->timeouts.client_body_ms);
		if (expect)
			conn_stage(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, false);
	}
	return CP_OK;
}

/* Reads the head; CP_OK when the request has started (c->req), CP_AGAIN for more, CP_ERROR when
 * refused. Each byte is looked at once, in the buffer's own pieces. */
static int read_head(struct conn *c, struct evbuffer *in)
{
	for (;;) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || !v.iov_len)
			return CP_AGAIN;
		if (!c->t_head) {
			c->t_head = now_us();
			arm_deadline(c, c->srv->cfg->timeouts.client_header_ms);
		}
		size_t used;
		int rc = http_head_feed(&c->head, v.iov_base, v.iov_len, &used);
		evbuffer_drain(in, used);
		if (rc == CP_ERROR) {
			refuse(c, c->head.error_status, c->head.error);
			return CP_ERROR;
		}
		if (rc == CP_OK)
			return start_request(c);
	}
}

/* Reads body bytes; CP_OK when complete, CP_AGAIN for more, CP_ERROR when refused. */
static int read_body(struct conn *c, struct evbuffer *in)
{
	struct creq *r = c->req;
	if (c->state == ST_BODY) {
		size_t have = evbuffer_get_length(in);
		size_t take = have < c->body_left ? have : c->body_left;
		if (take) {
			sbuf_reserve(&r->body, take);
			evbuffer_remove(in, r->body.data + r->body.len, take);
			r->body.len += take;
			r->body.data[r->body.len] = 0;
			c->body_left -= take;
		}
		return c->body_left ? CP_AGAIN : CP_OK;
	}
	for (;;) {
		struct evbuffer_iovec v;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || !v.iov_len)
			return CP_AGAIN;
		size_t off = 0;
		int rc = CP_AGAIN;
		while (off < v.iov_len && rc == CP_AGAIN) {
			size_t used, dlen;
			const char *data;
			rc = http_chunked_feed(&c->chunk, (const char *)v.iov_base + off, v.iov_len - off, &used, &data,
					       &dlen);
			if (dlen)
				sbuf_add(&r->body, data, dlen);
			off += used;
		}
		evbuffer_drain(in, off);
		if (rc == CP_ERROR) {
			refuse(c, c->chunk.error_status, c->chunk.error);
			return CP_ERROR;
		}
		if (rc == CP_OK)
			return CP_OK;
	}
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (c->state == ST_HANDLING) {
		/* A pipelined next request waits in the buffer, within bounds. */
		if (evbuffer_get_length(in) > (size_t)c->srv->cfg->limits.max_header_bytes)
			bufferevent_disable(bev, EV_READ);
		return;
	}
	if (c->state == ST_CLOSING) { /* a refused request's body, or lingering: discard */
		evbuffer_drain(in, evbuffer_get_length(in));
		return;
	}
	if (c->state == ST_HEADERS && read_head(c, in) != CP_OK)
		return;
	if (read_body(c, in) == CP_OK) {
		evtimer_del(c->deadline);
		dispatch_request(c);
	}
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	struct conn *c = arg;
	/* a deferred write callback may run after a new answer was queued: only an empty buffer is done */
	if (c->state == ST_CLOSING && !c->pend.len && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		conn_linger(c);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	struct conn *c = arg;
	if (what & BEV_EVENT_CONNECTED)
		return;
	if ((what & BEV_EVENT_TIMEOUT) && c->state != ST_CLOSING && c->state != ST_HANDLING &&
	    (c->state != ST_HEADERS || c->head.buf.len)) {
		refuse(c, 408, "Timed out reading the request.");
		return;
	}
	if (what & BEV_EVENT_ERROR) {
		unsigned long e;
		while ((e = bufferevent_get_openssl_error(c->bev)))
			log_debug("client %s: TLS: %s", c->peer, ERR_error_string(e, NULL));
	}
	conn_free(c);
}

static void rearm_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct listener *l = arg;
	if (l->lev)
		evconnlistener_enable(l->lev);
}

/* Answers a connection we will not serve with a 503 and closes it (cold path: blocking is not an
 * issue, the socket is new and its buffer empty). */
static void refuse_connection(evutil_socket_t fd, const char *why)
{
	char *body = openai_error_json(why, "server_error", NULL, NULL);
	char head[160];
	int hl = snprintf(head, sizeof head,
			  "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
			  "Retry-After: 1\r\nContent-Length: %zu\r\n\r\n", strlen(body));
	struct iovec v[2] = {{head, (size_t)hl}, {body, strlen(body)}};
	struct msghdr m = {.msg_iov = v, .msg_iovlen = 2};
	ssize_t w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
	(void)w;
	free(body);
	evutil_closesocket(fd);
}

/* accept() failed. Out of descriptors (EMFILE, ENFILE; ENOBUFS, ENOMEM): the spare descriptor is
 * given back for a moment to take pending connections and answer each with a 503, and the listener
 * rests for 100 ms instead of spinning on a queue it cannot take from. */
static void accept_error_cb(struct evconnlistener *lev, void *arg)
{
	struct listener *l = arg;
	struct server *srv = l->srv;
	int err = EVUTIL_SOCKET_ERROR();
	if (err != EMFILE && err != ENFILE && err != ENOBUFS && err != ENOMEM) {
		log_every_second(&srv->exhausted_log, 1, LOG_WARN, "accept failed: %s", strerror(err));
		return;
	}
	unsigned shed = 0;
	if (srv->spare_fd < 0) /* the last re-open failed: try again, so that a 503 can still be sent */
		srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	while (srv->spare_fd >= 0 && shed < 256) {
		close(srv->spare_fd);
		int fd = accept4(evconnlistener_get_fd(lev), NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0)
			refuse_connection(fd, "carpool is out of file descriptors.");
		srv->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			break;
		shed++;
	}
	log_every_second(&srv->exhausted_log, shed, LOG_WARN,
			 "out of file descriptors (%s): new connections get 503 and are closed (raise ulimit -n "
			 "or lower limits.max_clients); connections refused", strerror(err));
	if (!l->rearm_ev)
		l->rearm_ev = event_new(srv->base, -1, 0, rearm_cb, l);
	evconnlistener_disable(lev);
	struct timeval tv = {0, 100 * 1000};
	event_add(l->rearm_ev, &tv);
}

static void accept_cb(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen, void *arg)
{
	(void)salen;
	struct listener *l = arg;
	struct server *srv = l->srv;
	if (srv->one_accept) {
		/* Every worker's loop wakes for a new connection; taking one each time and listening again
		 * after the turn spreads a burst of connections over the workers instead of giving the whole
		 * burst to whichever woke first. */
		if (!l->rearm_ev)
			l->rearm_ev = event_new(srv->base, -1, 0, rearm_cb, l);
		evconnlistener_disable(lev);
		event_active(l->rearm_ev, 0, 0);
	}
	if (srv->nconns >= (unsigned)srv->cfg->limits.max_clients) {
		refuse_connection(fd, "carpool has too many open connections.");
		log_every_second(&srv->refused_log, 1, LOG_WARN, "max_clients (%ld) reached: connections refused",
				 srv->cfg->limits.max_clients);
		return;
	}
	struct conn *c = xcalloc(1, sizeof *c);
	c->srv = srv;
	c->serve = l->serve;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		/* The kernel's send buffer is bounded like carpool's own (max_client_buffer): a client that
		 * does not read is found out at that bound, not after megabytes of autotuned buffer. */
		int sndbuf = srv->cfg->limits.max_client_buffer < (4 << 20) ? (int)srv->cfg->limits.max_client_buffer : (4 << 20);
		setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
		char host[INET6_ADDRSTRLEN] = "?";
		int port = 0;
		if (sa->sa_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)sa;
			evutil_inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
			port = ntohs(in->sin_port);
		} else {
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
			evutil_inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
			port = ntohs(in6->sin6_port);
		}
		snprintf(c->peer, sizeof c->peer, "%s:%d", host, port);
	} else {
		snprintf(c->peer, sizeof c->peer, "unix");
	}
	int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
	if (l->ssl) {
		SSL *ssl = SSL_new(l->ssl);
		c->tls = true;
		c->bev = bufferevent_openssl_socket_new(srv->base, fd, ssl, BUFFEREVENT_SSL_ACCEPTING, opts);
	} else {
		c->bev = bufferevent_socket_new(srv->base, fd, opts);
	}
	if (!c->bev) {
		evutil_closesocket(fd);
		free(c);
		return;
	}
	srv->nconns++;
	DLIST_PUSH(srv->conns, c, prev, next);
	c->state = ST_HEADERS;
	http_head_init(&c->head, HTTP_REQUEST, (size_t)srv->cfg->limits.max_header_bytes);
	c->deadline = evtimer_new(srv->base, deadline_cb, c);
	c->t_head = now_us(); /* a new connection's first head is due from the accept */
	arm_deadline(c, srv->cfg->timeouts.client_header_ms);
	bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
	set_header_timeout(c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static SSL_CTX *server_tls(const struct cfg_listen *lc)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
	if (SSL_CTX_use_certificate_chain_file(ctx, lc->tls.cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, lc->tls.key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
		log_error("listen %s: cannot load TLS certificate/key: %s", lc->address,
			  ERR_error_string(ERR_get_error(), NULL));
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static int open_listener(struct server *srv, const struct cfg_listen *lc, struct listener *l)
{
	unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;
	l->srv = srv;
	l->serve = lc->serve;
	if (lc->tls.cert[0] && !(l->ssl = server_tls(lc)))
		return CP_ERROR;
	if (!strncmp(lc->address, "unix:", 5)) {
		struct sockaddr_un sun = {.sun_family = AF_UNIX};
		const char *path = lc->address + 5;
		if (strlen(path) >= sizeof sun.sun_path) {
			log_error("listen %s: socket path too long", lc->address);
			return CP_ERROR;
		}
		strcpy(sun.sun_path, path);
		/* a socket file someone still answers on is another live instance's: refuse, as TCP's bind
		 * does; only a stale one (connection refused) is removed */
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 && connect(probe, (struct sockaddr *)&sun, sizeof sun) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			log_error("listen %s: the socket is in use by a running process", lc->address);
			return CP_ERROR;
		}
		if (errno == ECONNREFUSED)
			unlink(path);
		l->lev = evconnlistener_new_bind(srv->base, accept_cb, l, flags, 1024, (struct sockaddr *)&sun, sizeof sun);
		if (!l->lev) {
			log_error("listen %s: %s", lc->address, strerror(errno));
			return CP_ERROR;
		}
		evconnlistener_set_error_cb(l->lev, accept_error_cb);
		chmod(path, (mode_t)strtol(lc->mode, NULL, 8));
		snprintf(l->unix_path, sizeof l->unix_path, "%s", path);
		log_info("listening on unix:%s%s", path, l->ssl ? " (tls)" : "");
		return CP_OK;
	}
	struct sockaddr_storage ss;
	int sslen = sizeof ss;
	/* libevent refuses port 0; without a port it parses to port 0, which asks the kernel for one */
	char addr[CFG_STR];
	snprintf(addr, sizeof addr, "%s", lc->address);
	size_t alen = strlen(addr);
	if (alen > 2 && !strcmp(addr + alen - 2, ":0"))
		addr[alen - 2] = 0;
	if (evutil_parse_sockaddr_port(addr, (struct sockaddr *)&ss, &sslen) != 0) {
		/* a host name: resolved once, at start (blocking is fine here) */
		char host[CFG_STR];
		snprintf(host, sizeof host, "%s", lc->address);
		char *colon = strrchr(host, ':');
		struct evutil_addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = EVUTIL_AI_PASSIVE}, *ai = NULL;
		if (!colon || (*colon = 0, evutil_getaddrinfo(host, colon + 1, &hints, &ai)) != 0 || !ai) {
			log_error("listen %s: not a valid host:port, [v6]:port or unix:/path", lc->address);
			return CP_ERROR;
		}
		memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
		sslen = (int)ai->ai_addrlen;
		evutil_freeaddrinfo(ai);
	}
	l->lev = evconnlistener_new_bind(srv->base, accept_cb, l, flags, 1024, (struct sockaddr *)&ss, sslen);
	if (!l->lev) {
		log_error("listen %s: %s", lc->address, strerror(errno));
		return CP_ERROR;
	}
	evconnlistener_set_error_cb(l->lev, accept_error_cb);
	struct sockaddr_storage bound;
	socklen_t blen = sizeof bound;
	getsockname(evconnlistener_get_fd(l->lev), (struct sockaddr *)&bound, &blen);
	char host[INET6_ADDRSTRLEN] = "?";
	int port;
	if (bound.ss_family == AF_INET6) {
		evutil_inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&bound)->sin6_addr, host, sizeof host);
		port = ntohs(((struct sockaddr_in6 *)&bound)->sin6_port);
		log_info("listening on [%s]:%d%s", host, port, l->ssl ? " (tls)" : "");
	} else {
		evutil_inet_ntop(AF_INET, &((struct sockaddr_in *)&bound)->sin_addr, host, sizeof host);
		port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
		log_info("listening on %s:%d%s", host, port, l->ssl ? " (tls)" : "");
	}
	return CP_OK;
}

/* Does this kernel complete a send that cannot go at once with -EAGAIN inside the submitting call,
 * as flush_cb needs (rather than park it until the socket drains)? Tried on a full socketpair. */
static const char *ring_sends_at_once(struct io_uring *ring)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) != 0)
		return "no socketpair for the check";
	static const char fill[4096];
	while (send(sv[0], fill, sizeof fill, MSG_DONTWAIT) > 0)
		;
	const char *why = NULL;
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	io_uring_prep_send(sqe, sv[0], fill, sizeof fill, MSG_NOSIGNAL | MSG_DONTWAIT);
	struct io_uring_cqe *cqe = NULL;
	if (io_uring_submit(ring) != 1)
		why = "IORING_OP_SEND not accepted";
	else if (io_uring_peek_cqe(ring, &cqe) != 0)
		why = "a send to a full socket waits instead of failing at once";
	else if (cqe->res != -EAGAIN)
		why = cqe->res == -EINVAL ? "IORING_OP_SEND not supported" : "a send to a full socket did not say EAGAIN";
	close(sv[0]); /* a parked send ends now */
	close(sv[1]);
	if (!cqe && why && io_uring_wait_cqe(ring, &cqe) != 0)
		cqe = NULL;
	if (cqe)
		io_uring_cqe_seen(ring, cqe);
	return why;
}

/* The ring of s's loop, as cfg->io_uring asks. CP_ERROR only when it is required ("on") and cannot be
 * had; "auto" falls back to send() and says why, once. primary: the first worker's, which states the
 * choice in the log. */
static int ring_start(struct server *s, bool primary)
{
	static atomic_bool said;
	if (s->cfg->io_uring == IO_URING_OFF) {
		if (primary)
			log_info("client writes: send(), one per client per loop turn (io_uring: off)");
		return CP_OK;
	}
	const char *why = NULL;
	char buf[128];
	/* SUBMIT_ALL (Linux 5.18): a send that fails does not hold back the ones after it */
	int rc = io_uring_queue_init(RING_ENTRIES, &s->ring, IORING_SETUP_SUBMIT_ALL);
	if (rc == -EINVAL)
		rc = io_uring_queue_init(RING_ENTRIES, &s->ring, 0);
	if (rc < 0) {
		snprintf(buf, sizeof buf, "io_uring_queue_init: %s", strerror(-rc));
		why = buf;
	} else if ((why = ring_sends_at_once(&s->ring))) {
		io_uring_queue_exit(&s->ring);
	}
	if (why && s->cfg->io_uring == IO_URING_ON) {
		log_error("io_uring: on, but io_uring is unavailable (%s)", why);
		return CP_ERROR;
	}
	if (why) {
		if (!atomic_exchange(&said, true))
			log_warn("io_uring is unavailable (%s): client writes use send(), one per client per loop turn", why);
		return CP_OK;
	}
	s->uring = true;
	if (primary)
		log_info("client writes: io_uring, one submission per loop turn for every client written to (TLS "
			 "clients: send())");
	return CP_OK;
}

/* A server without listeners yet; server_free releases it at any stage. NULL: io_uring is required
 * and cannot be had (logged). */
static struct server *server_alloc(struct event_base *base, const struct config *cfg, server_handler h, void *arg,
				   bool primary)
{
	struct server *s = xcalloc(1, sizeof *s);
	s->base = base;
	s->flush_ev = event_new(base, -1, 0, flush_cb, s);
	s->cfg = cfg;
	s->handler = h;
	s->arg = arg;
	s->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (ring_start(s, primary) != CP_OK) {
		server_free(s);
		return NULL;
	}
	return s;
}

struct server *server_new(struct event_base *base, const struct config *cfg, server_handler h, void *arg)
{
	struct server *s = server_alloc(base, cfg, h, arg, true);
	if (!s)
		return NULL;
	const char *acc = cfg->log.access;
	if (!strcmp(acc, "stdout")) {
		s->access = stdout;
	} else if (!strcmp(acc, "stderr")) {
		s->access = stderr;
	} else if (strcmp(acc, "off") && acc[0]) {
		s->access = fopen(acc, "a");
		if (!s->access) {
			log_error("log.access: cannot open %s: %s", acc, strerror(errno));
			server_free(s);
			return NULL;
		}
		s->access_owned = true;
	}
	for (int i = 0; i < cfg->nlisten; i++) {
		if (open_listener(s, &cfg->listen[i], &s->listeners[i]) != CP_OK) {
			s->nlisteners = i + 1;
			server_free(s);
			return NULL;
		}
		s->nlisteners = i + 1;
	}
	return s;
}

struct server *server_new_shared(struct event_base *base, const struct config *cfg, server_handler h, void *arg,
				 struct server *primary)
{
	primary->one_accept = true;
	struct server *s = server_alloc(base, cfg, h, arg, false);
	if (!s)
		return NULL;
	s->access = primary->access_owned ? fopen(cfg->log.access, "a") : primary->access;
	s->access_owned = primary->access_owned && s->access;
	s->one_accept = true;
	for (int i = 0; i < primary->nlisteners; i++) {
		const struct listener *pl = &primary->listeners[i];
		struct listener *l = &s->listeners[i];
		l->srv = s;
		l->serve = pl->serve;
		s->nlisteners = i + 1;
		if (!pl->lev)
			continue;
		evutil_socket_t fd = dup(evconnlistener_get_fd(pl->lev));
		if (fd < 0) {
			server_free(s);
			return NULL;
		}
		evutil_make_socket_nonblocking(fd);
		if (pl->ssl) {
			SSL_CTX_up_ref(pl->ssl);
			l->ssl = pl->ssl;
		}
		l->lev = evconnlistener_new(base, accept_cb, l, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
		if (!l->lev) {
			evutil_closesocket(fd);
			server_free(s);
			return NULL;
		}
		evconnlistener_set_error_cb(l->lev, accept_error_cb);
	}
	return s;
}

void server_stop_listening(struct server *s)
{
	for (int i = 0; i < s->nlisteners; i++) {
		struct listener *l = &s->listeners[i];
		if (l->lev) {
			evconnlistener_free(l->lev);
			l->lev = NULL;
		}
		if (l->rearm_ev) {
			event_free(l->rearm_ev);
			l->rearm_ev = NULL;
		}
		if (l->unix_path[0]) {
			unlink(l->unix_path);
			l->unix_path[0] = 0;
		}
	}
}

unsigned server_connections(const struct server *s) { return s->nconns; }

/* The first connection with a request still being answered, or NULL. */
static struct conn *open_request(struct server *s)
{
	for (struct conn *c = s->conns; c; c = c->next)
		if (c->state == ST_HANDLING && c->req && !c->req->finished)
			return c;
	return NULL;
}

void server_end_all(struct server *s, const char *message)
{
	struct conn *c;
	/* from the head each time: an owner told of one departure may end or free other connections */
	while ((c = open_request(s))) {
		struct creq *r = c->req;
		void (*gone)(void *) = r->sink.gone_cb;
		r->sink.gone_cb = NULL;
		if (gone)
			gone(r->sink.gone_arg);
		if (c->req != r || r->finished)
			continue;
		r->keepalive = false;
		c->state = ST_CLOSING; /* the request leaves ST_HANDLING whatever follows */
		if (!r->started) {
			creq_reply_error(r, 503, message, "server_error", NULL, NULL);
		} else if (r->sse) {
			char *err = openai_error_json(message, "server_error", NULL, NULL);
			sink_stream_error(&r->sink, err, strlen(err));
			free(err);
		} else {
			creq_abort(r);
		}
	}
}

void server_fit_descriptors(const struct config *cfg)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
		return;
	if (rl.rlim_cur < rl.rlim_max) { /* every client and upstream connection is a descriptor */
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
	}
	unsigned long long need = (unsigned long long)cfg->limits.max_clients * 2 + 64;
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
		return;
	unsigned long long fit = rl.rlim_cur > 64 ? (rl.rlim_cur - 64) / 2 : 0;
	log_warn("the descriptor limit (%llu) is below what limits.max_clients (%ld) can need (%llu: a client and its "
		 "upstream connection each, and 64 for listeners, logs and the pool): about %llu clients fit; past the "
		 "limit new connections get 503 and are closed, logged once a second (raise ulimit -n, or lower "
		 "limits.max_clients)",
		 (unsigned long long)rl.rlim_cur, cfg->limits.max_clients, need, fit);
}

void server_free(struct server *s)
{
	if (!s)
		return;
	server_stop_listening(s);
	while (s->conns)
		conn_free(s->conns);
	if (s->flush_ev)
		event_free(s->flush_ev);
	if (s->uring)
		io_uring_queue_exit(&s->ring);
	if (s->spare_fd >= 0)
		close(s->spare_fd);
	if (s->access_owned)
		fclose(s->access);
	for (int i = 0; i < s->nlisteners; i++)
		if (s->listeners[i].ssl)
			SSL_CTX_free(s->listeners[i].ssl);
	free(s);
}
