/* upstream: connection pool, TLS, timeouts and credentials for one upstream server. */
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <errno.h>
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

struct upconn {
	struct upstream *up;
	struct evhttp_connection *evcon;
	struct upconn *next;
	struct upconn *dnext, *dprev; /* on up->dying */
	bool dead;
};

struct upcall {
	struct upstream *up;
	struct upconn *conn;
	const struct upcall_ops *ops;
	void *arg;
	struct event *timer;	/* connect, then first byte, then idle */
	enum { PH_CONNECT, PH_FIRST_BYTE, PH_BODY } phase;
	uint64_t t_start, t_last;
	enum upcall_error err;
	bool cancelled;
	bool over;
	bool slot_freed;
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
		  const struct config *root, const struct cfg_upstream *cfg)
{
	memset(up, 0, sizeof *up);
	up->index = index;
	up->base = base;
	up->dns = dns;
	up->cfg = cfg;
	up->root = root;
	up->dialect = (enum dialect)cfg->dialect;
	up->max_inputs = (unsigned)cfg->max_inputs_per_call;
	up->room_ev = event_new(base, -1, 0, room_cb, up);
	up->wake_ev = evtimer_new(base, room_cb, up);
	up->tokens = 1.0;
	up->tokens_at = now_us();

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

static void upconn_free_now(struct upconn *uc)
{
	struct upstream *up = uc->up;
	if (uc->dprev)
		uc->dprev->dnext = uc->dnext;
	else if (up->dying == uc)
		up->dying = uc->dnext;
	if (uc->dnext)
		uc->dnext->dprev = uc->dprev;
	if (uc->evcon)
		evhttp_connection_free(uc->evcon);
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
	uc->dprev = NULL;
	uc->dnext = up->dying;
	if (up->dying)
		up->dying->dprev = uc;
	up->dying = uc;
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
		evhttp_connection_free(uc->evcon);
		free(uc);
	}
	while (up->dying)
		upconn_free_now(up->dying);
	while (up->idle) {
		struct upconn *uc = up->idle;
		up->idle = uc->next;
		evhttp_connection_free(uc->evcon);
		free(uc);
	}
	if (up->room_ev)
		event_free(up->room_ev);
	if (up->wake_ev)
		event_free(up->wake_ev);
	if (up->health_ev)
		event_free(up->health_ev);
	up->wake_ev = up->health_ev = NULL;
	if (up->ssl_ctx)
		SSL_CTX_free(up->ssl_ctx);
	free(up->auth);
	up->room_ev = NULL;
	up->ssl_ctx = NULL;
	up->auth = NULL;
}

bool upstream_healthy(const struct upstream *up) { return now_us() >= up->backoff_until; }

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
	if (until > up->backoff_until)
		up->backoff_until = until;
	wake_at(up, up->backoff_until);
}

static void refill(struct upstream *up)
{
	long rpm = up->cfg->rate_limit_rpm;
	if (!rpm)
		return;
	uint64_t now = now_us();
	double cap = rpm / 10.0 > 1.0 ? rpm / 10.0 : 1.0; /* up to 6 s of budget at once */
	up->tokens += (double)(now - up->tokens_at) / 1e6 * (double)rpm / 60.0;
	if (up->tokens > cap)
		up->tokens = cap;
	up->tokens_at = now;
}

bool upstream_has_room(struct upstream *up)
{
	if (up->inflight >= (unsigned)up->cfg->max_inflight)
		return false;
	if (!upstream_healthy(up)) {
		wake_at(up, up->backoff_until); /* whoever asked is asked again when it ends */
		return false;
	}
	if (up->cfg->rate_limit_rpm) {
		refill(up);
		if (up->tokens < 1.0) {
			double wait_s = (1.0 - up->tokens) * 60.0 / (double)up->cfg->rate_limit_rpm;
			wake_at(up, now_us() + (uint64_t)(wait_s * 1e6) + 1000);
			return false;
		}
	}
	return true;
}

/* A call that could not connect or broke: three in a row eject the upstream for a while. */
/* Takes the upstream out of service, for a backoff that doubles with each ejection in a row. */
static void eject(struct upstream *up, const char *why)
{
	long ms = 1000L << (up->ejections < 5 ? up->ejections : 5);
	if (ms > 30000)
		ms = 30000;
	up->ejections++;
	CNT_ADD(up->ejected_total, 1);
	up->consecutive_failures = 0;
	log_warn("upstream %s: ejected for %ld ms after %s", up->cfg->url, ms, why);
	upstream_backoff(up, ms);
	event_active(up->room_ev, 0, 0); /* the batcher re-examines what waits for it */
}

static void note_failure(struct upstream *up)
{
	if (++up->consecutive_failures >= 3)
		eject(up, "repeated failures");
}

static void note_success(struct upstream *up)
{
	up->consecutive_failures = 0;
	up->ejections = 0;
}

static void conn_close_cb(struct evhttp_connection *evcon, void *arg)
{
	(void)evcon;
	struct upconn *uc = arg;
	/* A TLS bufferevent cannot be reconnected by evhttp: never reuse a closed one. */
	if (uc->up->https)
		uc->dead = true;
}

static struct upconn *conn_get(struct upstream *up)
{
	while (up->idle) {
		struct upconn *uc = up->idle;
		up->idle = uc->next;
		up->nidle--;
		uc->next = NULL;
		if (!uc->dead)
			return uc;
		upconn_free_later(uc);
	}
	struct upconn *uc = xcalloc(1, sizeof *uc);
	uc->up = up;
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
		if (!bev) {
			free(uc);
			return NULL;
		}
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	} else {
		bev = bufferevent_socket_new(up->base, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	}
	uc->evcon = evhttp_connection_base_bufferevent_new(up->base, up->dns, bev, up->host, (unsigned short)up->port);
	if (!uc->evcon) {
		bufferevent_free(bev);
		free(uc);
		return NULL;
	}
	long t = up->root->timeouts.first_byte_ms > up->root->timeouts.idle_ms ? up->root->timeouts.first_byte_ms
										  : up->root->timeouts.idle_ms;
	struct timeval tv = {t / 1000 + 1, 0};
	evhttp_connection_set_timeout_tv(uc->evcon, &tv);
	evhttp_connection_set_closecb(uc->evcon, conn_close_cb, uc);
	return uc;
}

static void conn_put(struct upstream *up, struct upconn *uc)
{
	if (uc->dead || up->nidle >= (unsigned)up->cfg->max_inflight) {
		upconn_free_later(uc);
		return;
	}
	uc->next = up->idle;
	up->idle = uc;
	up->nidle++;
}

static void call_arm_next(struct upcall *c);

static void call_arm(struct upcall *c, long ms)
{
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
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
	struct upstream *up = c->up;
	if (c->prev)
		c->prev->next = c->next;
	else if (up->open_calls == c)
		up->open_calls = c->next;
	if (c->next)
		c->next->prev = c->prev;
	call_slot_free(c);
	if (c->timer)
		event_free(c->timer);
	free(c);
}

/* Ends the call once: tells the owner (unless cancelled). */
static void call_over(struct upcall *c, enum upcall_error err)
{
	if (c->over)
		return;
	c->over = true;
	if (err != UPE_NONE) {
		CNT_ADD(c->up->errors, 1);
		CNT_ADD(c->up->errors_by[err], 1);
		c->conn->dead = true;
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
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn->evcon);
	if (!bev)
		return;
	unsigned long e;
	while ((e = bufferevent_get_openssl_error(bev)))
		log_warn("upstream %s: TLS: %s", c->up->cfg->url, ERR_error_string(e, NULL));
	SSL *ssl = bufferevent_openssl_get_ssl(bev);
	long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
	if (v != X509_V_OK)
		log_warn("upstream %s: TLS certificate rejected: %s", c->up->cfg->url, X509_verify_cert_error_string(v));
}

static void req_done_cb(struct evhttp_request *req, void *arg)
{
	struct upcall *c = arg;
	if (c->cancelled)
		return; /* an abandoned call: call_abandon_cb frees it */
	enum upcall_error err = c->err;
	if ((!req || evhttp_request_get_response_code(req) == 0) && err == UPE_NONE)
		err = c->phase == PH_CONNECT ? UPE_CONNECT : UPE_BROKEN;
	if (err == UPE_CONNECT)
		log_tls_failure(c);
	call_over(c, err);
	conn_put(c->up, c->conn);
	call_free(c);
}

static void req_error_cb(enum evhttp_request_error e, void *arg)
{
	struct upcall *c = arg;
	if (c->cancelled || c->err != UPE_NONE)
		return;
	if (e == EVREQ_HTTP_TIMEOUT)
		c->err = c->phase == PH_BODY ? UPE_IDLE : UPE_FIRST_BYTE;
	else if (c->phase == PH_BODY)
		c->err = UPE_BROKEN;
	else
		c->err = UPE_CONNECT;
}

static int head_cb(struct evhttp_request *req, void *arg)
{
	struct upcall *c = arg;
	if (c->cancelled)
		return 0;
	c->phase = PH_BODY;
	c->t_last = now_us();
	evtimer_del(c->timer);
	call_arm_next(c);
	c->ops->on_head(c->arg, evhttp_request_get_response_code(req), evhttp_request_get_input_headers(req));
	return 0;
}

static void chunk_cb(struct evhttp_request *req, void *arg)
{
	struct upcall *c = arg;
	c->t_last = now_us();
	if (c->cancelled)
		return;
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	int n = evbuffer_peek(in, -1, NULL, NULL, 0);
	struct evbuffer_iovec vs[16], *v = n <= 16 ? vs : xcalloc((size_t)n, sizeof *v);
	evbuffer_peek(in, -1, NULL, v, n);
	for (int i = 0; i < n && !c->cancelled; i++)
		c->ops->on_data(c->arg, v[i].iov_base, v[i].iov_len);
	if (v != vs)
		free(v);
}

/* Frees an abandoned call and its connection from the loop, never from inside one of the
 * connection's callbacks; freeing the connection frees its request without callbacks. */
static void call_abandon_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct upcall *c = arg;
	evhttp_connection_free(c->conn->evcon);
	free(c->conn);
	call_free(c);
}

static void call_abandon(struct upcall *c)
{
	c->cancelled = true;
	c->over = true;
	c->conn->dead = true;
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

static bool call_connected(struct upcall *c)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn->evcon);
	evutil_socket_t s = bev ? bufferevent_getfd(bev) : -1;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	return s >= 0 && getpeername(s, (struct sockaddr *)&ss, &sl) == 0;
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
	if (c->phase == PH_CONNECT && call_connected(c))
		c->phase = PH_FIRST_BYTE;
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

static enum evhttp_cmd_type method_of(const char *m)
{
	if (!strcmp(m, "GET")) return EVHTTP_REQ_GET;
	if (!strcmp(m, "POST")) return EVHTTP_REQ_POST;
	if (!strcmp(m, "PUT")) return EVHTTP_REQ_PUT;
	if (!strcmp(m, "DELETE")) return EVHTTP_REQ_DELETE;
	if (!strcmp(m, "PATCH")) return EVHTTP_REQ_PATCH;
	if (!strcmp(m, "HEAD")) return EVHTTP_REQ_HEAD;
	if (!strcmp(m, "OPTIONS")) return EVHTTP_REQ_OPTIONS;
	return (enum evhttp_cmd_type)0;
}

struct upcall *upstream_call(struct upstream *up, const char *method, const char *path,
			     const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
			     size_t len, const struct upcall_ops *ops, void *arg)
{
	enum evhttp_cmd_type cmd = method_of(method);
	if (!cmd)
		return NULL;
	struct upconn *uc = conn_get(up);
	if (!uc) {
		log_error("upstream %s: cannot create a connection", up->cfg->url);
		return NULL;
	}
	struct upcall *c = xcalloc(1, sizeof *c);
	c->up = up;
	c->conn = uc;
	c->ops = ops;
	c->arg = arg;
	c->t_start = c->t_last = now_us();
	c->timer = evtimer_new(up->base, timer_cb, c);
	c->next = up->open_calls;
	if (up->open_calls)
		up->open_calls->prev = c;
	up->open_calls = c;
	struct evhttp_request *req = evhttp_request_new(req_done_cb, c);
	evhttp_request_set_chunked_cb(req, chunk_cb);
	evhttp_request_set_header_cb(req, head_cb);
	evhttp_request_set_error_cb(req, req_error_cb);
	struct evkeyvalq *oh = evhttp_request_get_output_headers(req);
	evhttp_add_header(oh, "Host", up->host_header);
	for (size_t i = 0; i + 1 < nhdrs * 2; i += 2)
		evhttp_add_header(oh, hdrs[i], hdrs[i + 1]);
	const char *auth = up->auth ? up->auth : client_auth;
	if (auth)
		evhttp_add_header(oh, "Authorization", auth);
	if (body && len)
		evbuffer_add(evhttp_request_get_output_buffer(req), body, len);
	char uri[8192];
	snprintf(uri, sizeof uri, "%s%s", up->prefix, path);
	CNT_ADD(up->inflight, 1);
	CNT_ADD(up->calls, 1);
	if (up->cfg->rate_limit_rpm) {
		refill(up);
		up->tokens -= 1.0;
	}
	/* A connection that is already open skips the connect phase. */
	struct bufferevent *bev = evhttp_connection_get_bufferevent(uc->evcon);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	c->phase = fd >= 0 ? PH_FIRST_BYTE : PH_CONNECT;
	if (evhttp_make_request(uc->evcon, req, cmd, uri) != 0) {
		log_error("upstream %s: cannot send the request", up->cfg->url);
		/* evhttp_make_request frees req on failure */
		c->over = true;
		c->conn->dead = true;
		upconn_free_later(c->conn);
		call_free(c);
		return NULL;
	}
	call_arm_next(c);
	return c;
}

void upcall_cancel(struct upcall *c)
{
	if (!c || c->cancelled)
		return;
	call_abandon(c);
}

/* --- dialect detection ------------------------------------------------------------------- */

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

static void probe_done(void *arg, enum upcall_error err)
{
	struct probe *p = arg;
	struct upstream *up = p->up;
	enum dialect d = DIALECT_OPENAI;
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
	if (up->dialect == DIALECT_AUTO || !up->detected) {
		up->dialect = d;
		up->detected = true;
		log_info("upstream %s: dialect %s (detected%s)", up->cfg->url, dialect_name(d),
			 err == UPE_NONE ? "" : "; /v1/models unreachable, assuming openai");
	}
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

void upstream_probe(struct upstream *up)
{
	if (up->dialect != DIALECT_AUTO)
		return;
	struct probe *p = xcalloc(1, sizeof *p);
	p->up = up;
	if (!upstream_call(up, "GET", "/v1/models", NULL, 0, NULL, NULL, 0, &probe_ops, p))
		free(p);
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
	if (err == UPE_NONE && h->status >= 200 && h->status < 300) {
		if (!upstream_healthy(up))
			log_info("upstream %s: health check passed; back in service", up->cfg->url);
		note_success(up);
		up->backoff_until = 0;
		event_active(up->room_ev, 0, 0);
	} else {
		up->health_fail++;
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
	struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
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
