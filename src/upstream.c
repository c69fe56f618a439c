/* upstream: connection pool, TLS, timeouts and credentials for one upstream server. */
#include "carpool/upstream.h"
#include "carpool/http.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_RESP_HEAD 65536 /* bytes of one response head (status line and headers) */
#define MAX_IDLE 64	    /* idle connections kept when max_inflight does not bound them */
#define READ_PIECE 65536    /* plain TCP: bytes asked of one read() */
#define READ_TURN 262144    /* plain TCP: bytes read from one connection in one loop turn at most */

/* Where the response on a connection is: carpool reads upstream responses itself, so that a streamed
 * body costs no allocation per chunk (evhttp's client allocates a line for every chunk size). */
enum resp_state { RS_HEAD, RS_LEN, RS_EOF, RS_CHUNKED, RS_DONE };

/* One HTTP/1.1 connection to the upstream: in use by one call, or idle in the pool. */
struct upconn {
	struct upstream *up;
	struct bufferevent *bev;
	/* Plain TCP: carpool reads the socket itself, in READ_PIECE reads until it is drained (libevent
	 * 2.1's bufferevent asks FIONREAD, then reads 4 KB, one read a loop turn); the bufferevent
	 * connects and writes. NULL on TLS (the bufferevent reads) and until connected. */
	struct event *rd_ev;
	struct upcall *call; /* the call it serves, or NULL */
	struct upconn *next, *iprev;  /* on up->idle */
	struct upconn *dnext, *dprev; /* on up->dying */
	bool dead;		      /* never reused */
	bool connected;
	bool reused;		/* the current call is not the connection's first */
	bool answered;		/* a byte of the current call's answer arrived */
	bool streamed;		/* the last answer head said text/event-stream */
	unsigned requests;	/* sent on this connection */
	long ka_timeout_s;	/* the server's Keep-Alive timeout=, or -1 */
	long ka_max;		/* the server's Keep-Alive max=, or -1 */
	struct event *idle_ev;	/* closes it when it has been idle too long */
	/* the response being read */
	enum resp_state rs;
	bool no_body; /* the answer to a HEAD request */
	bool keep;    /* reusable once this response is complete */
	int status;
	struct http_head head;	   /* RS_HEAD (the same parser as the client edge: http.h) */
	struct http_chunked chunk; /* RS_CHUNKED */
	uint64_t left;		   /* RS_LEN: body bytes still to come */
	struct evkeyvalq headers;
};

struct upcall {
	struct upstream *up;
	struct upconn *conn;
	const struct upcall_ops *ops;
	void *arg;
	struct event *timer;	/* connect, then first byte, then idle */
	enum { PH_CONNECT, PH_FIRST_BYTE, PH_BODY } phase;
	uint64_t t_start, t_last;
	bool cancelled;
	bool over;
	bool slot_freed;
	bool side;		/* carpool's own GET (load signals): no slot, no budget, no failure counts */
	struct evbuffer *req;	/* the request, kept while it may be re-sent (reused connection, no answer yet) */
	struct upcall *next, *prev; /* on up->open_calls */
};

static const struct timeval zero_tv = {0, 0};

static void call_free(struct upcall *c);

const char *upcall_error_name(enum upcall_error e)
{
	switch (e) {
	case UPE_NONE: return "none";
	case UPE_CONNECT: return "connect";
	case UPE_FIRST_BYTE: return "first_byte_timeout";
	case UPE_IDLE: return "idle_timeout";
	case UPE_BROKEN: return "broken";
	}
	return "?";
}

static void room_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upstream *up = arg;
	log_debug("upstream %s: room (inflight %u)", up->cfg->url, up->inflight);
	if (up->on_room)
		up->on_room(up, up->room_arg);
}

int upstream_init(struct upstream *up, int index, struct event_base *base, struct evdns_base *dns,
		  const struct config *root, const struct cfg_upstream *cfg, struct upstream *first)
{
	memset(up, 0, sizeof *up);
	up->index = index;
	/* before any thread starts: the copies register in the main thread */
	up->owns_health = !first;
	up->health = first ? first->health : xcalloc(1, sizeof *up->health);
	if (up->health->ncopies < UPSTREAM_MAX_COPIES)
		up->health->copies[up->health->ncopies++] = up;
	up->base = base;
	up->dns = dns;
	up->cfg = cfg;
	up->root = root;
	up->dialect = (enum dialect)cfg->dialect;
	up->max_inputs = (unsigned)cfg->max_inputs_per_call;
	up->room_ev = event_new(base, -1, 0, room_cb, up);
	up->wake_ev = evtimer_new(base, room_cb, up);
	rate_bucket_init(&up->budget, cfg->rate_limit_rpm, 6, false, now_us());

	const char *u = cfg->url;
	up->https = !strncmp(u, "https://", 8);
	u += up->https ? 8 : 7;
	const char *slash = strchr(u, '/');
	size_t hostport_len = slash ? (size_t)(slash - u) : strlen(u);
	char hp[300];
	if (hostport_len == 0 || hostport_len >= sizeof hp) {
		log_error("upstream %s: bad host", cfg->url);
		return CP_ERROR;
	}
	memcpy(hp, u, hostport_len);
	hp[hostport_len] = 0;
	snprintf(up->host_header, sizeof up->host_header, "%s", hp);
	up->port = up->https ? 443 : 80;
	char *host = hp;
	char *port = NULL;
	if (hp[0] == '[') {
		char *close = strchr(hp, ']');
		if (!close) {
			log_error("upstream %s: bad IPv6 address", cfg->url);
			return CP_ERROR;
		}
		*close = 0;
		host = hp + 1;
		if (close[1] == ':')
			port = close + 2;
	} else if ((port = strrchr(hp, ':'))) {
		*port++ = 0;
	}
	if (port) {
		char *end;
		long p = strtol(port, &end, 10);
		if (*end || p <= 0 || p > 65535) {
			log_error("upstream %s: bad port", cfg->url);
			return CP_ERROR;
		}
		up->port = (int)p;
	}
	snprintf(up->host, sizeof up->host, "%s", host);
	if (slash) {
		snprintf(up->prefix, sizeof up->prefix, "%s", slash);
		size_t pl = strlen(up->prefix);
		while (pl && up->prefix[pl - 1] == '/')
			up->prefix[--pl] = 0;
	}
	if (cfg->api_key_env[0]) {
		const char *key = getenv(cfg->api_key_env);
		if (!key || !*key) {
			log_error("upstream %s: api_key_env %s is not set in the environment", cfg->url, cfg->api_key_env);
			return CP_ERROR;
		}
		size_t n = strlen(key) + 8;
		up->auth = xmalloc(n);
		snprintf(up->auth, n, "Bearer %s", key);
	}
	if (up->https) {
		SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
		if (!ctx)
			return CP_ERROR;
		SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
		if (cfg->tls.verify) {
			SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
			int ok = cfg->tls.ca_file[0] ? SSL_CTX_load_verify_locations(ctx, cfg->tls.ca_file, NULL)
						    : SSL_CTX_set_default_verify_paths(ctx);
			if (ok != 1) {
				log_error("upstream %s: cannot load CA file %s: %s", cfg->url,
					  cfg->tls.ca_file[0] ? cfg->tls.ca_file : "(system default)",
					  ERR_error_string(ERR_get_error(), NULL));
				SSL_CTX_free(ctx);
				return CP_ERROR;
			}
		} else {
			log_warn("upstream %s: TLS certificate verification is OFF", cfg->url);
			SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
		}
		up->ssl_ctx = ctx;
	}
	return CP_OK;
}

/* Neither reads nor writes any more (the connection is on its way out). */
static void conn_quiet(struct upconn *uc)
{
	bufferevent_disable(uc->bev, EV_READ | EV_WRITE);
	if (uc->rd_ev)
		event_del(uc->rd_ev);
}

static void upconn_free_now(struct upconn *uc)
{
	DLIST_UNLINK(uc->up->dying, uc, dprev, dnext);
	if (uc->idle_ev)
		event_free(uc->idle_ev);
	if (uc->rd_ev)
		event_free(uc->rd_ev);
	if (uc->bev)
		bufferevent_free(uc->bev);
	evhttp_clear_headers(&uc->headers);
	http_head_free(&uc->head);
	free(uc);
}

static void upconn_free_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	upconn_free_now(arg);
}

/* Frees a connection from the loop, never from inside one of its own callbacks. */
static void upconn_free_later(struct upconn *uc)
{
	struct upstream *up = uc->up;
	DLIST_PUSH(up->dying, uc, dprev, dnext);
	event_base_once(up->base, -1, EV_TIMEOUT, upconn_free_cb, uc, &zero_tv);
}

void upstream_free(struct upstream *up)
{
	/* at shutdown, after the loop: calls still open end here (their owners hear of it), and
	 * connections waiting for a deferred free are freed now */
	up->on_room = NULL;
	while (up->open_calls) {
		struct upcall *c = up->open_calls;
		if (!c->cancelled && !c->over) {
			c->over = true;
			c->ops->on_done(c->arg, UPE_BROKEN);
		}
		struct upconn *uc = c->conn;
		call_free(c);
		if (uc->dprev || uc->dnext || up->dying == uc)
			continue; /* an abandoned call's connection: on the dying list */
		upconn_free_now(uc);
	}
	while (up->dying)
		upconn_free_now(up->dying);
	while (up->idle) {
		struct upconn *uc = up->idle;
		DLIST_UNLINK(up->idle, uc, iprev, next);
		upconn_free_now(uc);
	}
	if (up->room_ev)
		event_free(up->room_ev);
	if (up->wake_ev)
		event_free(up->wake_ev);
	if (up->health_ev)
		event_free(up->health_ev);
	if (up->probe_ev)
		event_free(up->probe_ev);
	up->wake_ev = up->health_ev = up->probe_ev = NULL;
	if (up->ssl_ctx)
		SSL_CTX_free(up->ssl_ctx);
	free(up->auth);
	up->room_ev = NULL;
	up->ssl_ctx = NULL;
	up->auth = NULL;
	/* after every loop has ended: no other thread reads the list now */
	struct upstream_health *h = up->health;
	for (int i = 0; h && i < h->ncopies; i++)
		if (h->copies[i] == up)
			h->copies[i] = h->copies[--h->ncopies];
	if (up->owns_health)
		free(h);
	up->health = NULL;
}

/* The health record is written by every worker: relaxed atomics, read-modify-write where two
 * workers may write at once. */
uint64_t upstream_backoff_until(const struct upstream *up) { return CNT_GET(up->health->backoff_until); }

bool upstream_healthy(const struct upstream *up) { return now_us() >= upstream_backoff_until(up); }

/* Every worker's copy re-examines what waits for the upstream (its batcher's room callback). */
static void wake_copies(struct upstream *up)
{
	for (int i = 0; i < up->health->ncopies; i++)
		if (up->health->copies[i]->room_ev)
			event_active(up->health->copies[i]->room_ev, 0, 0);
}

static void wake_at(struct upstream *up, uint64_t when)
{
	uint64_t now = now_us();
	/* +2 ms: the loop's timers may fire a little before our own clock says the time has come */
	uint64_t d = (when > now ? when - now : 0) + 2000;
	struct timeval tv = {(time_t)(d / 1000000), (suseconds_t)(d % 1000000)};
	evtimer_add(up->wake_ev, &tv);
}

void upstream_backoff(struct upstream *up, long ms)
{
	log_debug("upstream %s: backing off for %ld ms", up->cfg->url, ms);
	uint64_t until = now_us() + (uint64_t)ms * 1000u;
	uint64_t cur = CNT_GET(up->health->backoff_until);
	while (until > cur && !__atomic_compare_exchange_n(&up->health->backoff_until, &cur, until, true,
							    __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
	wake_at(up, upstream_backoff_until(up));
}

unsigned upstream_capacity(const struct upstream *up)
{
	return up->cfg->max_sequences ? (unsigned)up->cfg->max_sequences : CNT_GET(up->learned_cap);
}

unsigned upstream_load(const struct upstream *up)
{
	return CNT_GET(up->seqs) + (CNT_GET(up->sig_fresh) ? CNT_GET(up->sig_others) : 0);
}

unsigned upstream_free_seqs(const struct upstream *up)
{
	unsigned cap = upstream_capacity(up), load = upstream_load(up);
	if (!cap)
		return UINT_MAX;
	return load < cap ? cap - load : 0;
}

void upstream_seqs_take(struct upstream *up, unsigned n) { CNT_ADD(up->seqs, n); }

void upstream_seqs_end(struct upstream *up, unsigned n)
{
	if (!n)
		return;
	CNT_ADD(up->seqs, -(int)(n < up->seqs ? n : up->seqs));
	event_active(up->room_ev, 0, 0);
}

bool upstream_room_or_wake(struct upstream *up)
{
	if (up->cfg->max_inflight && up->inflight >= (unsigned)up->cfg->max_inflight)
		return false;
	if (!upstream_free_seqs(up))
		return false;
	if (!upstream_healthy(up)) {
		wake_at(up, upstream_backoff_until(up)); /* whoever asked is asked again when it ends */
		return false;
	}
	if (up->cfg->rate_limit_rpm) {
		double wait_s = rate_bucket_wait(&up->budget, now_us());
		if (wait_s > 0) {
			wake_at(up, now_us() + (uint64_t)(wait_s * 1e6) + 1000);
			return false;
		}
	}
	return true;
}

struct upstream *upstream_pick(struct upstream *ups, int nups, unsigned cands, unsigned avoid, enum upstream_pick_by by)
{
	struct upstream *best = NULL;
	unsigned best_tier = 0;
	double best_load = 0;
	for (int i = 0; i < nups; i++) {
		if (!(cands & (1u << i)))
			continue;
		struct upstream *up = &ups[i];
		unsigned tier; /* lower is better: first the tier, then the load per weight */
		double load;
		if (by == UPSTREAM_PICK_ROOM) {
			if (!upstream_room_or_wake(up))
				continue;
			tier = (avoid & (1u << i)) ? 1 : 0;
			load = (double)upstream_load(up);
		} else {
			tier = upstream_healthy(up) ? 0 : 1;
			load = (double)up->inflight;
		}
		load /= (double)up->cfg->weight;
		if (!best || tier < best_tier || (tier == best_tier && load < best_load)) {
			best = up;
			best_tier = tier;
			best_load = load;
		}
	}
	return best;
}

static void probe_later(struct upstream *up, long ms);

/* Readiness: an answer makes it ready at once; a failure starts (or continues) the grace period. An
 * upstream whose probe got no answer is back when it answers anything: its next probe need not wait
 * (one that answered the probe with an error status keeps the backoff). */
static void note_answer(struct upstream *up)
{
	/* every worker's answers land here: written only when it tells something new, at most once a
	 * millisecond while nothing fails, so that busy workers do not fight over the record */
	struct upstream_health *h = up->health;
	uint64_t now = now_us();
	if (CNT_GET(h->failing_since) || now - CNT_GET(h->answered_at) >= 1000)
		CNT_SET(h->answered_at, now);
	if (CNT_GET(h->failing_since))
		CNT_SET(h->failing_since, 0);
	if (up->probe_silent && up->probe_ev && evtimer_pending(up->probe_ev, NULL)) {
		up->probe_silent = false;
		evtimer_add(up->probe_ev, &zero_tv);
	}
}

/* A failure: the grace period starts, and a probe will tell when it answers again (without one, an
 * upstream nobody sends to any more - not ready, ejected, unpolled - could never be ready again). */
static void note_silence(struct upstream *up)
{
	uint64_t now = now_us();
	uint64_t none = 0;
	__atomic_compare_exchange_n(&up->health->failing_since, &none, now, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
	CNT_SET(up->health->failed_at, now);
	if (!up->probing && !(up->probe_ev && evtimer_pending(up->probe_ev, NULL))) {
		up->probe_silent = true;
		probe_later(up, 1000);
	}
}

long upstream_ready_grace_ms(const struct upstream *up)
{
	long checks = up->cfg->health_path[0] ? 3 * up->cfg->health_interval_ms : 0;
	return checks > 5000 ? checks : 5000;
}

bool upstream_ready(const struct upstream *up)
{
	const struct upstream_health *h = up->health;
	uint64_t answered = CNT_GET(h->answered_at);
	if (!answered)
		return false;
	/* failing since the last answer at the earliest (an answer and a failure on two workers at once
	 * may leave an older failing_since behind) */
	uint64_t since = CNT_GET(h->failing_since);
	if (!since || CNT_GET(h->failed_at) <= answered)
		return true;
	since = since > answered ? since : answered;
	uint64_t now = now_us();
	return now < since || now - since < (uint64_t)upstream_ready_grace_ms(up) * 1000u;
}

/* Takes the upstream out of service, for a backoff that doubles with each ejection in a row. An
 * upstream detected once is detected again when it comes back: it may be another server. */
static void eject(struct upstream *up, const char *why)
{
	unsigned in_a_row = __atomic_fetch_add(&up->health->ejections, 1, __ATOMIC_RELAXED);
	long ms = 1000L << (in_a_row < 5 ? in_a_row : 5);
	if (ms > 30000)
		ms = 30000;
	CNT_ADD(up->ejected_total, 1);
	CNT_SET(up->health->consecutive_failures, 0);
	log_warn("upstream %s: ejected for %ld ms after %s", up->cfg->url, ms, why);
	upstream_backoff(up, ms);
	if (!up->probing) {
		up->probe_silent = true;
		probe_later(up, ms);
	}
	wake_copies(up); /* every worker's batcher re-examines what waits for it */
}

/* A call that could not connect or broke: three in a row, on any worker, eject the upstream (the
 * worker whose failure is the third ejects it, once). */
static void note_failure(struct upstream *up)
{
	if (__atomic_add_fetch(&up->health->consecutive_failures, 1, __ATOMIC_RELAXED) == 3)
		eject(up, "repeated failures");
}

static void note_success(struct upstream *up)
{
	if (CNT_GET(up->health->consecutive_failures))
		CNT_SET(up->health->consecutive_failures, 0);
	if (CNT_GET(up->health->ejections))
		CNT_SET(up->health->ejections, 0);
}

static void conn_read_cb(struct bufferevent *bev, void *arg);
static void conn_event_cb(struct bufferevent *bev, short what, void *arg);

static const struct upcall_ops health_ops;
static void idle_cb(evutil_socket_t fd, short what, void *arg);

/* Takes an idle connection out of the pool (to use it or to close it). */
static void idle_unlink(struct upstream *up, struct upconn *uc)
{
	DLIST_UNLINK(up->idle, uc, iprev, next);
	up->nidle--;
	evtimer_del(uc->idle_ev);
}

/* Has the server closed this idle connection, or sent something unasked? A peek, without reading:
 * the FIN may sit in the socket before the loop has delivered it. */
static bool peer_closed(struct upconn *uc)
{
	evutil_socket_t fd = bufferevent_getfd(uc->bev);
	if (fd < 0 || evbuffer_get_length(bufferevent_get_input(uc->bev)))
		return true;
	char ch;
	ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
	return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* The server closed a pooled connection. When that follows a streamed answer, and has done so before
 * with no reuse after a stream working in between, the upstream closes connections after streamed
 * answers (llama.cpp b4748 does, Keep-Alive header notwithstanding): for a minute such connections are
 * closed at once rather than kept, so that none sits idle holding one of the server's connection
 * threads, or costs the next call a wasted send. */
static void note_server_close(struct upstream *up, const struct upconn *uc)
{
	CNT_ADD(up->conn_server_closed, 1);
	if (!uc->streamed || ++up->stream_closes < 2)
		return;
	uint64_t now = now_us();
	if (now >= up->no_stream_keep_until)
		log_info("upstream %s: it closes connections after streamed answers; carpool closes them first",
			 up->cfg->url);
	up->no_stream_keep_until = now + 60 * 1000000ull;
}

/* The most recently used idle connection the server has not closed, or NULL. */
static struct upconn *conn_take_idle(struct upstream *up)
{
	while (up->idle) {
		struct upconn *uc = up->idle;
		idle_unlink(up, uc);
		if (!uc->dead && peer_closed(uc)) {
			note_server_close(up, uc);
			uc->dead = true;
		}
		if (!uc->dead) {
			uc->reused = true;
			CNT_ADD(up->conn_reused, 1);
			return uc;
		}
		upconn_free_later(uc);
	}
	return NULL;
}

/* A new connection, connecting. NULL (logged) if it cannot even start. */
static struct upconn *conn_new(struct upstream *up)
{
	struct upconn *uc = xcalloc(1, sizeof *uc);
	uc->up = up;
	uc->ka_timeout_s = uc->ka_max = -1;
	TAILQ_INIT(&uc->headers);
	struct bufferevent *bev = NULL;
	if (up->https) {
		SSL *ssl = SSL_new(up->ssl_ctx);
		SSL_set_tlsext_host_name(ssl, up->host);
		if (up->cfg->tls.verify) {
			X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
			X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
			struct in6_addr a6;
			struct in_addr a4;
			if (inet_pton(AF_INET, up->host, &a4) == 1 || inet_pton(AF_INET6, up->host, &a6) == 1)
				X509_VERIFY_PARAM_set1_ip_asc(param, up->host);
			else
				SSL_set1_host(ssl, up->host);
		}
		bev = bufferevent_openssl_socket_new(up->base, -1, ssl, BUFFEREVENT_SSL_CONNECTING,
						     BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
		if (bev)
			bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	} else {
		bev = bufferevent_socket_new(up->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	if (!bev) {
		free(uc);
		log_error("upstream %s: cannot create a connection", up->cfg->url);
		return NULL;
	}
	uc->bev = bev;
	uc->idle_ev = evtimer_new(up->base, idle_cb, uc);
	bufferevent_setcb(bev, conn_read_cb, NULL, conn_event_cb, uc);
	if (bufferevent_socket_connect_hostname(bev, up->dns, AF_UNSPEC, up->host, up->port) != 0) {
		log_warn("upstream %s: cannot start connecting", up->cfg->url);
		upconn_free_now(uc);
		return NULL;
	}
	bufferevent_enable(bev, up->https ? EV_READ | EV_WRITE : EV_WRITE);
	return uc;
}

/* How long uc may stay idle in the pool, in ms (0: not at all): keepalive_ms, shortened to end a
 * second before the server's own Keep-Alive timeout (half of it when that is under 2 s). */
static long idle_allowance_ms(const struct upconn *uc)
{
	long ms = uc->up->cfg->keepalive_ms;
	if (uc->ka_timeout_s >= 0) {
		long server_ms = uc->ka_timeout_s * 1000;
		long margin = server_ms / 2 < 1000 ? server_ms / 2 : 1000;
		if (server_ms - margin < ms)
			ms = server_ms - margin;
	}
	return ms;
}

/* A connection whose call is over: back to the pool when the server will take another request on it
 * (Keep-Alive max=) and the pool has room; closed otherwise. */
static void conn_put(struct upstream *up, struct upconn *uc)
{
	unsigned cap = up->cfg->keepalive_conns ? (unsigned)up->cfg->keepalive_conns
			     : up->cfg->max_inflight ? (unsigned)up->cfg->max_inflight : MAX_IDLE;
	long ms = idle_allowance_ms(uc);
	if (uc->dead || ms <= 0 || up->nidle >= cap || (uc->ka_max >= 0 && uc->requests >= (unsigned long)uc->ka_max) ||
	    (uc->streamed && now_us() < up->no_stream_keep_until)) {
		upconn_free_later(uc);
		return;
	}
	DLIST_PUSH(up->idle, uc, iprev, next);
	up->nidle++;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(uc->idle_ev, &tv);
}

/* Idle for as long as it may be: closed before the server closes it under a request. */
static void idle_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upconn *uc = arg;
	idle_unlink(uc->up, uc);
	CNT_ADD(uc->up->conn_idle_expired, 1);
	upconn_free_later(uc);
}

/* The server closed (or wrote on) a connection idle in the pool: out of it at once. */
static void idle_drop(struct upconn *uc)
{
	uc->dead = true;
	conn_quiet(uc);
	if (!uc->iprev && uc->up->idle != uc)
		return; /* not in the pool (already on its way out) */
	note_server_close(uc->up, uc);
	idle_unlink(uc->up, uc);
	upconn_free_later(uc);
}

static void call_arm_next(struct upcall *c);

static void call_arm(struct upcall *c, long ms)
{
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(c->timer, &tv);
}

/* Gives the call's slot back to the pool (once). */
static void call_slot_free(struct upcall *c)
{
	if (c->slot_freed)
		return;
	c->slot_freed = true;
	CNT_ADD(c->up->inflight, -1);
	event_active(c->up->room_ev, 0, 0);
}

static void call_free(struct upcall *c)
{
	DLIST_UNLINK(c->up->open_calls, c, prev, next);
	call_slot_free(c);
	if (c->timer)
		event_free(c->timer);
	if (c->req)
		evbuffer_free(c->req);
	free(c);
}

/* Ends the call once: tells the owner (unless cancelled). */
static void call_over(struct upcall *c, enum upcall_error err)
{
	if (c->over)
		return;
	c->over = true;
	if (err != UPE_NONE)
		c->conn->dead = true;
	/* any answer makes it ready, but a health check's is judged by its status (health_done) */
	if (c->ops != &health_ops) {
		if (err != UPE_NONE)
			note_silence(c->up);
		else if (c->conn->status < 500)
			note_answer(c->up);
	}
	if (c->side) {
		/* health is judged by real calls and health checks, not by a load poll */
	} else if (err != UPE_NONE) {
		CNT_ADD(c->up->errors, 1);
		CNT_ADD(c->up->errors_by[err], 1);
		if (err == UPE_CONNECT || err == UPE_BROKEN || err == UPE_FIRST_BYTE)
			note_failure(c->up);
	} else {
		note_success(c->up);
	}
	if (!c->cancelled)
		c->ops->on_done(c->arg, err);
}

/* Logs why a TLS connection failed (OpenSSL's error queue, the certificate verdict). */
static void log_tls_failure(struct upcall *c)
{
	if (!c->up->https)
		return;
	struct bufferevent *bev = c->conn->bev;
	unsigned long e;
	while ((e = bufferevent_get_openssl_error(bev)))
		log_warn("upstream %s: TLS: %s", c->up->cfg->url, ERR_error_string(e, NULL));
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (v != X509_V_OK)
		log_warn("upstream %s: TLS certificate rejected: %s", c->up->cfg->url, X509_verify_cert_error_string(v));
}

/* The response on uc ended (complete, or err): the call is over, the connection goes back to the
 * pool if it can carry another request. */
static void resp_end(struct upconn *uc, enum upcall_error err)
{
	struct upcall *c = uc->call;
	uc->call = NULL;
	evhttp_clear_headers(&uc->headers);
	if (err != UPE_NONE || !uc->keep || evbuffer_get_length(bufferevent_get_input(uc->bev)))
		uc->dead = true;
	if (uc->dead)
		conn_quiet(uc);
	if (err == UPE_CONNECT && !c->side)
		log_tls_failure(c);
	call_over(c, err);
	conn_put(c->up, uc);
	call_free(c);
}

/* The response head is complete (uc->head): its framing decides how the body comes, its fields go to
 * uc->headers for the call's owner. CP_ERROR: framing that could be read two ways, or no number. */
static int head_done(struct upconn *uc)
{
	struct http_head *h = &uc->head;
	if (http_head_response_framing(h, uc->no_body) != CP_OK)
		return CP_ERROR;
	uc->status = h->status;
	uc->keep = h->keepalive;
	for (unsigned i = 0; i < h->nfields; i++)
		evhttp_add_header(&uc->headers, h->fields[i].name, h->fields[i].value);
	const char *ka = evhttp_find_header(&uc->headers, "Keep-Alive");
	if (ka) /* how long the server keeps it idle, how many requests it takes on it (whether max= counts
		 * the requests left or all of them varies: carpool stops at whichever comes first) */
		http_keep_alive(ka, &uc->ka_timeout_s, &uc->ka_max);
	if (uc->ka_max >= 0 && uc->ka_max <= 1)
		uc->keep = false; /* the server takes no more requests on it */
	const char *ct = evhttp_find_header(&uc->headers, "Content-Type");
	uc->streamed = ct && strcasestr(ct, "text/event-stream");
	switch (h->body) {
	case HTTP_BODY_NONE: uc->rs = RS_DONE; break;
	case HTTP_BODY_LENGTH: uc->rs = RS_LEN; uc->left = h->content_length; break;
	case HTTP_BODY_CHUNKED: uc->rs = RS_CHUNKED; http_chunked_init(&uc->chunk, UINT64_MAX, MAX_RESP_HEAD); break;
	case HTTP_BODY_EOF: uc->rs = RS_EOF; break; /* the body ends when the upstream closes */
	}
	http_head_free(h);
	return CP_OK;
}

/* Hands n body bytes to the call's owner, in place. false: the owner cancelled the call meanwhile. */
static bool deliver(struct upcall *c, struct evbuffer *in, size_t n)
{
	struct evbuffer_iovec vs[16];
	int k = evbuffer_peek(in, (ev_ssize_t)n, NULL, vs, 16);
	size_t done = 0;
	for (int i = 0; i < k && i < 16 && done < n && !c->cancelled; i++) {
		size_t l = vs[i].iov_len < n - done ? vs[i].iov_len : n - done;
		c->ops->on_data(c->arg, vs[i].iov_base, l);
		done += l;
	}
	if (c->cancelled)
		return false;
	if (done < n) /* more than 16 pieces: the rest, contiguous */
		c->ops->on_data(c->arg, (const char *)evbuffer_pullup(in, (ev_ssize_t)n) + done, n - done);
	if (c->cancelled)
		return false;
	evbuffer_drain(in, n);
	return true;
}

/* Reads the response: head, then the body as it comes (Content-Length, chunked, or to the close). */
static void conn_read_cb(struct bufferevent *bev, void *arg)
{
	struct upconn *uc = arg;
	struct upcall *c = uc->call;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (!c) { /* an idle connection has nothing to say: never reuse it */
		evbuffer_drain(in, evbuffer_get_length(in));
		idle_drop(uc);
		return;
	}
	c->t_last = now_us();
	if (!uc->answered && evbuffer_get_length(in)) {
		uc->answered = true;
		if (uc->reused && uc->streamed)
			c->up->stream_closes = 0; /* reuse after a stream works here */
		if (c->req) { /* past the point where it could be re-sent */
			evbuffer_free(c->req);
			c->req = NULL;
		}
	}
	for (;;) {
		struct evbuffer_iovec v = {0};
		if (uc->rs == RS_HEAD || uc->rs == RS_CHUNKED)
			evbuffer_peek(in, -1, NULL, &v, 1);
		switch (uc->rs) {
		case RS_HEAD: {
			if (!v.iov_len)
				return;
			size_t used;
			int rc = http_head_feed(&uc->head, v.iov_base, v.iov_len, &used);
			evbuffer_drain(in, used);
			if (rc == CP_AGAIN)
				continue;
			if (rc == CP_OK && uc->head.status < 200) { /* an interim answer (100 Continue): the real head follows */
				http_head_free(&uc->head);
				http_head_init(&uc->head, HTTP_RESPONSE, MAX_RESP_HEAD);
				continue;
			}
			if (rc != CP_OK || head_done(uc) != CP_OK) {
				log_warn("upstream %s: not a valid HTTP/1.1 response: %s", c->up->cfg->url, uc->head.error);
				resp_end(uc, UPE_BROKEN);
				return;
			}
			c->phase = PH_BODY;
			evtimer_del(c->timer);
			call_arm_next(c);
			if (!c->cancelled)
				c->ops->on_head(c->arg, uc->status, &uc->headers);
			if (c->cancelled)
				return;
			continue;
		}
		case RS_LEN:
		case RS_EOF: {
			size_t n = evbuffer_get_length(in);
			if (!n)
				return;
			if (uc->rs != RS_EOF && n > uc->left)
				n = (size_t)uc->left;
			if (!deliver(c, in, n))
				return;
			if (uc->rs == RS_EOF)
				return;
			uc->left -= n;
			if (!uc->left)
				uc->rs = RS_DONE;
			continue;
		}
		case RS_CHUNKED: {
			if (!v.iov_len)
				return;
			size_t used, dlen;
			const char *data;
			int rc = http_chunked_feed(&uc->chunk, v.iov_base, v.iov_len, &used, &data, &dlen);
			if (dlen) { /* in place, before the bytes leave the buffer */
				c->ops->on_data(c->arg, data, dlen);
				if (c->cancelled)
					return;
			}
			evbuffer_drain(in, used);
			if (rc == CP_ERROR) {
				log_warn("upstream %s: bad chunked body: %s", c->up->cfg->url, uc->chunk.error);
				resp_end(uc, UPE_BROKEN);
				return;
			}
			if (rc == CP_OK)
				uc->rs = RS_DONE;
			continue;
		}
		case RS_DONE:
			resp_end(uc, UPE_NONE);
			return;
		}
	}
}

/* Plain TCP, the socket readable: reads it until it is drained (a read shorter than asked), or
 * READ_TURN bytes this turn (the rest next turn), into the input buffer without asking FIONREAD
 * first, then hands everything to conn_read_cb at once; the end of the stream or an error goes to
 * conn_event_cb as the bufferevent would report it. */
static void conn_readable_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)what;
	struct upconn *uc = arg;
	struct evbuffer *in = bufferevent_get_input(uc->bev);
	char buf[READ_PIECE]; /* copied out, so that what stays buffered (a partial event) pins a buffer of its size */
	short ended = 0;
	size_t total = 0;
	while (total < READ_TURN) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n > 0) {
			evbuffer_add(in, buf, (size_t)n);
			total += (size_t)n;
			if ((size_t)n < sizeof buf)
				break; /* drained */
			continue;
		}
		if (n == 0)
			ended = BEV_EVENT_EOF;
		else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
			ended = BEV_EVENT_ERROR;
		break;
	}
	if (total)
		conn_read_cb(uc->bev, uc);
	if (ended && !uc->dead && event_pending(uc->rd_ev, EV_READ, NULL)) {
		event_del(uc->rd_ev);
		conn_event_cb(uc->bev, (short)(BEV_EVENT_READING | ended), uc);
	}
}

/* Puts the call on uc (new, or taken from the pool) and writes req (consumed) to it. */
static void call_attach(struct upcall *c, struct upconn *uc, bool head_request, struct evbuffer *req)
{
	c->conn = uc;
	uc->call = c;
	uc->rs = RS_HEAD;
	http_head_free(&uc->head);
	http_head_init(&uc->head, HTTP_RESPONSE, MAX_RESP_HEAD);
	uc->answered = false;
	uc->no_body = head_request;
	uc->requests++;
	evbuffer_add_buffer(bufferevent_get_output(uc->bev), req);
	/* A connection that is already open skips the connect phase. */
	c->phase = uc->connected ? PH_FIRST_BYTE : PH_CONNECT;
	c->t_start = c->t_last = now_us();
	evtimer_del(c->timer);
	call_arm_next(c);
}

/* The server closed a reused connection before any byte of the answer: it may close an idle connection
 * at any moment (RFC 9112 §9.3), so this says nothing of its health. The request goes again at once
 * on a new connection; a failure there is the call's own. */
static void call_resend(struct upcall *c)
{
	struct upstream *up = c->up;
	struct upconn *old = c->conn;
	note_server_close(up, old);
	log_debug("upstream %s: a reused connection closed before the answer; sending again on a new one",
		  up->cfg->url);
	old->call = NULL;
	old->dead = true;
	conn_quiet(old);
	bufferevent_setcb(old->bev, NULL, NULL, NULL, NULL);
	upconn_free_later(old);
	struct upconn *uc = conn_new(up);
	if (!uc) {
		call_over(c, UPE_CONNECT);
		call_free(c);
		return;
	}
	CNT_ADD(up->resent, 1);
	struct evbuffer *req = c->req;
	c->req = NULL;
	call_attach(c, uc, old->no_body, req);
	evbuffer_free(req);
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct upconn *uc = arg;
	struct upcall *c = uc->call;
	if (what & BEV_EVENT_CONNECTED) {
		uc->connected = true;
		if (!uc->up->https) {
			uc->rd_ev = event_new(uc->up->base, bufferevent_getfd(bev), EV_READ | EV_PERSIST, conn_readable_cb, uc);
			event_add(uc->rd_ev, NULL);
		}
		if (c && c->phase == PH_CONNECT)
			c->phase = PH_FIRST_BYTE;
		return;
	}
	if (!c) {
		idle_drop(uc);
		return;
	}
	if (uc->reused && !uc->answered && c->req) {
		call_resend(c);
		return;
	}
	/* closed or failed: never reused */
	uc->dead = true;
	conn_quiet(uc);
	if (uc->rs == RS_EOF && (what & BEV_EVENT_EOF)) {
		conn_read_cb(bev, uc); /* what is still buffered */
		if (uc->call == c && !c->cancelled)
			resp_end(uc, UPE_NONE);
		return;
	}
	resp_end(uc, uc->connected ? UPE_BROKEN : UPE_CONNECT);
}

/* Frees an abandoned call and its connection from the loop, never from inside one of the
 * connection's callbacks. */
static void call_abandon_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upcall *c = arg;
	upconn_free_now(c->conn);
	call_free(c);
}

static void call_abandon(struct upcall *c)
{
	c->cancelled = true;
	c->over = true;
	c->conn->dead = true;
	c->conn->call = NULL;
	conn_quiet(c->conn);
	bufferevent_setcb(c->conn->bev, NULL, NULL, NULL, NULL);
	evtimer_del(c->timer);
	call_slot_free(c);
	event_base_once(c->up->base, -1, EV_TIMEOUT, call_abandon_cb, c, &zero_tv);
}

/* A timeout: the owner hears of it, then the call is abandoned. */
static void call_abort(struct upcall *c, enum upcall_error err)
{
	call_over(c, err);
	call_abandon(c);
}

/* Arms the call's timer for the nearest of its deadlines. */
static void call_arm_next(struct upcall *c)
{
	const struct config *root = c->up->root;
	uint64_t el = (now_us() - c->t_start) / 1000;
	long next;
	if (c->phase == PH_BODY) {
		next = root->timeouts.idle_ms - (long)((now_us() - c->t_last) / 1000);
	} else {
		next = root->timeouts.first_byte_ms - (long)el;
		if (c->phase == PH_CONNECT && root->timeouts.connect_ms - (long)el < next)
			next = root->timeouts.connect_ms - (long)el;
	}
	call_arm(c, next > 0 ? next : 1);
}

/* The connect, first-byte and idle deadlines, each measured from its own start. */
static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upcall *c = arg;
	const struct config *root = c->up->root;
	long el = (long)((now_us() - c->t_start) / 1000);
	if (c->phase == PH_CONNECT && el >= root->timeouts.connect_ms) {
		log_warn("upstream %s: connect timed out after %ld ms", c->up->cfg->url, root->timeouts.connect_ms);
		call_abort(c, UPE_CONNECT);
		return;
	}
	if (c->phase != PH_BODY && el >= root->timeouts.first_byte_ms) {
		log_warn("upstream %s: no response within first_byte_ms (%ld)", c->up->cfg->url, root->timeouts.first_byte_ms);
		call_abort(c, UPE_FIRST_BYTE);
		return;
	}
	if (c->phase == PH_BODY && (long)((now_us() - c->t_last) / 1000) >= root->timeouts.idle_ms) {
		log_warn("upstream %s: stream idle for %ld ms", c->up->cfg->url, root->timeouts.idle_ms);
		call_abort(c, UPE_IDLE);
		return;
	}
	call_arm_next(c);
}

static bool method_ok(const char *m)
{
	static const char *const ok[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
		if (!strcmp(m, ok[i]))
			return true;
	return false;
}

/* counted: the call takes a call slot (max_inflight) and a request of the budget (rate_limit_rpm). */
static struct upcall *call_start(struct upstream *up, const char *method, const char *path,
				 const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
				 size_t len, const struct upcall_ops *ops, void *arg, bool counted)
{
	if (!method_ok(method))
		return NULL;
	struct upconn *uc = conn_take_idle(up);
	if (!uc && !(uc = conn_new(up)))
		return NULL;
	struct upcall *c = xcalloc(1, sizeof *c);
	c->up = up;
	c->ops = ops;
	c->arg = arg;
	c->timer = evtimer_new(up->base, timer_cb, c);
	DLIST_PUSH(up->open_calls, c, prev, next);
	/* the request: header values come from carpool or from the client's parsed (CR/LF-free) head */
	struct evbuffer *req = evbuffer_new();
	evbuffer_add_printf(req, "%s %s%s HTTP/1.1\r\nHost: %s\r\nVia: %s\r\n", method, up->prefix, path, up->host_header,
			    instance_via());
	for (size_t i = 0; i + 1 < nhdrs * 2; i += 2)
		evbuffer_add_printf(req, "%s: %s\r\n", hdrs[i], hdrs[i + 1]);
	const char *auth = up->auth ? up->auth : client_auth;
	if (auth)
		evbuffer_add_printf(req, "Authorization: %s\r\n", auth);
	bool bodyless = !strcmp(method, "GET") || !strcmp(method, "HEAD") || !strcmp(method, "DELETE") ||
			!strcmp(method, "OPTIONS");
	if (len || !bodyless)
		evbuffer_add_printf(req, "Content-Length: %zu\r\n", len);
	evbuffer_add(req, "\r\n", 2);
	if (body && len)
		evbuffer_add(req, body, len);
	if (uc->reused) { /* a copy, kept until the answer starts: the server may have closed it meanwhile */
		c->req = evbuffer_new();
		evbuffer_add(c->req, evbuffer_pullup(req, -1), evbuffer_get_length(req));
	}
	c->slot_freed = c->side = !counted;
	if (counted) {
		CNT_ADD(up->inflight, 1);
		CNT_ADD(up->calls, 1);
	}
	if (counted && up->cfg->rate_limit_rpm)
		rate_bucket_spend(&up->budget, now_us());
	call_attach(c, uc, !strcmp(method, "HEAD"), req);
	evbuffer_free(req);
	return c;
}

struct upcall *upstream_call(struct upstream *up, const char *method, const char *path,
			     const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
			     size_t len, const struct upcall_ops *ops, void *arg)
{
	return call_start(up, method, path, hdrs, nhdrs, client_auth, body, len, ops, arg, true);
}

struct upcall *upstream_side_get(struct upstream *up, const char *path, const struct upcall_ops *ops, void *arg)
{
	return call_start(up, "GET", path, NULL, 0, NULL, NULL, 0, ops, arg, false);
}

void upcall_cancel(struct upcall *c)
{
	if (!c || c->cancelled)
		return;
	call_abandon(c);
}

/* --- dialect detection ------------------------------------------------------------------- */

/* Every worker probes its own copy of each upstream; of the workers that learn the same thing, only
 * the first says it in the log. said holds what was last said about one upstream. */
static atomic_uint dialect_said[CFG_MAX_UPSTREAMS], info_said[CFG_MAX_UPSTREAMS];

static bool say_once(atomic_uint *said, unsigned what)
{
	return atomic_exchange(said, what) != what;
}

struct probe {
	struct upstream *up;
	struct sbuf body;
	int status;
	bool llama_server;
};

static void probe_head(void *arg, int status, const struct evkeyvalq *headers)
{
	struct probe *p = arg;
	p->status = status;
	const char *server = evhttp_find_header(headers, "Server");
	if (server && strstr(server, "llama.cpp"))
		p->llama_server = true;
}

static void probe_data(void *arg, const char *data, size_t len)
{
	struct probe *p = arg;
	if (p->body.len + len < (1u << 20))
		sbuf_add(&p->body, data, len);
}

/* A probe of an upstream whose dialect is configured: only whether it answers (readiness). */
static void reach_done(struct upstream *up, const struct probe *p, enum upcall_error err, long next_ms)
{
	if (err == UPE_NONE && p->status < 500) {
		up->probe_wait_ms = 0;
		return;
	}
	unsigned what = err == UPE_NONE ? 0x100u + (unsigned)p->status : 0x10000u + err;
	if (say_once(&dialect_said[up->index], what)) {
		if (err == UPE_NONE)
			log_warn("upstream %s: GET %s/v1/models answered %d: not ready until it answers under 500 "
				 "(trying again, every 30 s at most)", up->cfg->url, up->prefix, p->status);
		else
			log_warn("upstream %s: GET %s/v1/models failed (%s): not ready until it answers (trying again, "
				 "every 30 s at most)", up->cfg->url, up->prefix, upcall_error_name(err));
	}
	up->probe_silent = err != UPE_NONE;
	probe_later(up, next_ms);
}

static void probe_done(void *arg, enum upcall_error err)
{
	struct probe *p = arg;
	struct upstream *up = p->up;
	enum dialect d = DIALECT_OPENAI;
	up->probing = false;
	if (event_base_got_exit(up->base)) /* ended by the shutdown (upstream_free): nothing learnt */
		goto out;
	long next_ms = up->probe_wait_ms ? up->probe_wait_ms * 2 : 1000;
	if (next_ms > 30000)
		next_ms = 30000;
	if (up->cfg->dialect != DIALECT_AUTO) {
		reach_done(up, p, err, next_ms);
		goto out;
	}
	if (err == UPE_NONE && p->status == 200) {
		cJSON *j = cJSON_ParseWithLength(p->body.data ? p->body.data : "", p->body.len);
		cJSON *data = j ? cJSON_GetObjectItemCaseSensitive(j, "data") : NULL;
		cJSON *first = cJSON_IsArray(data) ? data->child : NULL;
		cJSON *owner = first ? cJSON_GetObjectItemCaseSensitive(first, "owned_by") : NULL;
		if (cJSON_IsString(owner)) {
			if (!strcasecmp(owner->valuestring, "vllm") || !strcasecmp(owner->valuestring, "sglang"))
				d = DIALECT_VLLM;
			else if (!strcasecmp(owner->valuestring, "llamacpp"))
				d = DIALECT_LLAMACPP;
		}
		cJSON_Delete(j);
	}
	if (p->llama_server)
		d = DIALECT_LLAMACPP;
	/* only a server that answered /v1/models (or named itself) was detected: a 404 says the url is
	 * wrong, not that the server speaks plain openai */
	bool detected = err == UPE_NONE && (p->status == 200 || p->llama_server);
	/* what was learnt, for say_once: a dialect (never auto, so not 0), a status, or an error */
	unsigned learnt = detected ? (unsigned)d : err == UPE_NONE ? 0x100u + (unsigned)p->status : 0x10000u + err;
	/* the dialect last detected stays until another is: an upstream that went away keeps its own */
	const char *meanwhile = up->detected ? dialect_name(up->dialect) : "openai";
	if (detected) {
		up->dialect = d;
		up->detected = true;
		up->probe_wait_ms = 0;
		if (say_once(&dialect_said[up->index], learnt))
			log_info("upstream %s: dialect %s (detected)", up->cfg->url, dialect_name(d));
	} else {
		if (say_once(&dialect_said[up->index], learnt)) {
			if (err == UPE_NONE)
				log_warn("upstream %s: GET %s/v1/models answered %d: dialect not detected, using %s "
					 "until it is (trying again, every 30 s at most)",
					 up->cfg->url, up->prefix, p->status, meanwhile);
			else
				log_warn("upstream %s: GET %s/v1/models failed (%s): dialect not detected, using %s "
					 "until it is (trying again, every 30 s at most)",
					 up->cfg->url, up->prefix, upcall_error_name(err), meanwhile);
		}
		up->probe_silent = err != UPE_NONE;
		probe_later(up, next_ms);
	}
out:
	sbuf_free(&p->body);
	free(p);
}

/* text-embeddings-inference says how many inputs one call may carry in GET /info
 * (max_client_batch_size); carpool keeps to the smaller of that and max_inputs_per_call. */
static void info_done(void *arg, enum upcall_error err)
{
	struct probe *p = arg;
	struct upstream *up = p->up;
	if (err == UPE_NONE && p->status == 200) {
		cJSON *j = cJSON_ParseWithLength(p->body.data ? p->body.data : "", p->body.len);
		cJSON *m = j ? cJSON_GetObjectItemCaseSensitive(j, "max_client_batch_size") : NULL;
		if (cJSON_IsNumber(m) && m->valuedouble >= 1 && m->valuedouble < (double)up->max_inputs) {
			up->max_inputs = (unsigned)m->valuedouble;
			if (say_once(&info_said[up->index], up->max_inputs))
				log_info("upstream %s: /info says at most %u inputs per call", up->cfg->url, up->max_inputs);
		}
		cJSON_Delete(j);
	}
	sbuf_free(&p->body);
	free(p);
}

static const struct upcall_ops probe_ops = {probe_head, probe_data, probe_done};
static const struct upcall_ops info_ops = {probe_head, probe_data, info_done};

void upstream_probe_info(struct upstream *up)
{
	struct probe *p = xcalloc(1, sizeof *p);
	p->up = up;
	if (!upstream_call(up, "GET", "/info", NULL, 0, NULL, NULL, 0, &info_ops, p))
		free(p);
}

/* The first probe is a call like any other; the tries after it are side calls, so that probing an
 * upstream that is down never ejects it (nor logs an ejection each third try). */
static void probe_send(struct upstream *up, bool first)
{
	struct probe *p = xcalloc(1, sizeof *p);
	p->up = up;
	struct upcall *c = first ? upstream_call(up, "GET", "/v1/models", NULL, 0, NULL, NULL, 0, &probe_ops, p)
				 : upstream_side_get(up, "/v1/models", &probe_ops, p);
	if (!c) {
		free(p);
		probe_later(up, 30000);
		return;
	}
	up->probing = true;
}

static void probe_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	probe_send(arg, false);
}

/* Detects again in ms (a later request for it replaces an earlier one). */
static void probe_later(struct upstream *up, long ms)
{
	if (!up->probe_ev)
		up->probe_ev = evtimer_new(up->base, probe_cb, up);
	up->probe_wait_ms = ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(up->probe_ev, &tv);
}

void upstream_probe(struct upstream *up)
{
	if (up->cfg->dialect == DIALECT_AUTO)
		probe_send(up, true);
	else if (!up->cfg->health_path[0] && (!up->cfg->load_poll_ms || up->cfg->dialect == DIALECT_OPENAI))
		probe_send(up, false); /* nothing else would show that it answers */
}

/* --- active health checks -------------------------------------------------------------------- */

struct health {
	struct upstream *up;
	int status;
};

static void health_head(void *arg, int status, const struct evkeyvalq *headers)
{
	(void)headers;
	((struct health *)arg)->status = status;
}

static void health_data(void *arg, const char *data, size_t len)
{
	(void)arg;
	(void)data;
	(void)len;
}

static void health_done(void *arg, enum upcall_error err)
{
	struct health *h = arg;
	struct upstream *up = h->up;
	if (event_base_got_exit(up->base)) { /* ended by the shutdown (upstream_free): nothing learnt */
		free(h);
		return;
	}
	if (err == UPE_NONE && h->status >= 200 && h->status < 300) {
		note_answer(up);
		if (!upstream_healthy(up))
			log_info("upstream %s: health check passed; back in service", up->cfg->url);
		note_success(up);
		CNT_SET(up->health->backoff_until, 0);
		wake_copies(up);
	} else {
		note_silence(up);
		log_warn("upstream %s: health check failed (%s, status %d)", up->cfg->url, upcall_error_name(err), h->status);
		if (upstream_healthy(up)) /* a failed check ejects at once; an ejected one stays out */
			eject(up, "a failed health check");
	}
	free(h);
}

static const struct upcall_ops health_ops = {health_head, health_data, health_done};

static void health_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upstream *up = arg;
	struct health *h = xcalloc(1, sizeof *h);
	h->up = up;
	/* a health check does not take a call slot from batches: it counts, but is not refused */
	if (!upstream_call(up, "GET", up->cfg->health_path, NULL, 0, NULL, NULL, 0, &health_ops, h))
		free(h);
	long ms = up->cfg->health_interval_ms;
	struct timeval tv = tv_of_ms(ms);
	evtimer_add(up->health_ev, &tv);
}

void upstream_start_health(struct upstream *up)
{
	if (!up->cfg->health_path[0])
		return;
	up->health_ev = evtimer_new(up->base, health_cb, up);
	struct timeval tv = {0, 0};
	evtimer_add(up->health_ev, &tv);
}
