/* upstream: one pool per configured upstream: keep-alive connections (evhttp client), TLS with
 * verification, timeouts, the injected credential, and the dialect the server speaks. */
#ifndef CARPOOL_UPSTREAM_H
#define CARPOOL_UPSTREAM_H

#include "carpool/common.h"
#include "carpool/config.h"

struct event_base;
struct evdns_base;
struct evkeyvalq;

enum upcall_error {
	UPE_NONE = 0,
	UPE_CONNECT,	/* could not connect (refused, unreachable, connect timeout, TLS handshake) */
	UPE_FIRST_BYTE, /* no response head within first_byte_ms */
	UPE_IDLE,	/* no bytes for idle_ms in the middle of a response */
	UPE_BROKEN,	/* the connection broke or the response was malformed */
};

struct upcall_ops {
	/* The response head arrived. */
	void (*on_head)(void *arg, int status, const struct evkeyvalq *headers);
	/* Body bytes, as they arrive (already de-chunked). */
	void (*on_data)(void *arg, const char *data, size_t len);
	/* The call is over: err is UPE_NONE for a complete response. The call is freed after this. */
	void (*on_done)(void *arg, enum upcall_error err);
};

struct upstream {
	int index;
	struct event_base *base;
	struct evdns_base *dns;
	const struct cfg_upstream *cfg;
	const struct config *root;
	bool https;
	char host[300];
	int port;
	char prefix[256];	/* path prefix without a trailing slash */
	char host_header[300];
	void *ssl_ctx;		/* SSL_CTX, https only */
	char *auth;		/* "Bearer <key>" from api_key_env, or NULL: pass-through */
	enum dialect dialect;	/* as configured, or detected when configured auto */
	bool detected;
	unsigned inflight;
	struct upconn *idle;
	unsigned nidle;
	unsigned long calls, errors;
	unsigned consecutive_failures; /* calls in a row that could not connect or broke */
	struct event *room_ev;	/* fires (deferred) when a call slot frees */
	void (*on_room)(struct upstream *up, void *arg);
	void *room_arg;
};

struct upcall;

/* Sets up the pool; CP_ERROR (logged) if the URL or the TLS setup is bad or api_key_env is unset. */
int upstream_init(struct upstream *up, int index, struct event_base *base, struct evdns_base *dns,
		  const struct config *root, const struct cfg_upstream *cfg);
void upstream_free(struct upstream *up);

bool upstream_has_room(const struct upstream *up);
/* Healthy: fewer than 3 calls in a row failed to connect or broke. */
bool upstream_healthy(const struct upstream *up);
/* Detects the dialect with GET /v1/models when it is configured auto (asynchronous). */
void upstream_probe(struct upstream *up);

/* Starts one HTTP call. path is appended to the URL's prefix. hdrs (may be NULL) are "Name: value"
 * pairs to forward; client_auth is used only when the upstream has no credential of its own.
 * Returns NULL (after logging) if the call cannot even start. */
struct upcall *upstream_call(struct upstream *up, const char *method, const char *path,
			     const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
			     size_t len, const struct upcall_ops *ops, void *arg);
/* Abandons a call: no callback is made after this; its connection is closed. */
void upcall_cancel(struct upcall *c);

const char *upcall_error_name(enum upcall_error e);

#endif
