/* server: listeners and client connections; a small HTTP/1.1 server on bufferevents.
 *
 * carpool parses client requests itself (rather than with evhttp) so that every refusal - a body
 * over the limit, an oversized header, a wrong method - is an OpenAI-style JSON error, so that a
 * client that reads too slowly can be dropped at a bound, and so that a client that leaves is
 * reported to the request's owner exactly once. */
#ifndef CARPOOL_SERVER_H
#define CARPOOL_SERVER_H

#include "carpool/common.h"
#include "carpool/config.h"
#include "carpool/sink.h"

struct event_base;
struct conn;

struct creq_header {
	char *name;
	char *value;
};

/* One client request. Owned by its connection; the handler borrows it until it ends the response
 * (creq_reply / creq_stream_end) or until the gone callback tells it the client left. It is also the
 * sink of its answer (sink.h): a handler may hand &r->sink to whoever writes the answer. */
#define CREQ_ID_MAX 64 /* an X-Request-Id longer than this, or with other than [A-Za-z0-9._:-], is replaced */

struct creq {
	struct sink sink; /* first: the server's sink operations cast back */
	struct conn *conn;
	char method[16];
	char *target; /* as sent: path and query */
	char *path;   /* path only */
	struct creq_header *headers;
	size_t nheaders;
	struct sbuf body;
	bool keepalive;
	bool started;  /* response headers sent */
	bool chunked;  /* a streamed (chunked) response */
	bool sse;      /* ... of server-sent events */
	bool finished; /* response complete */
	uint64_t t_start;
	/* for the access log: set by the server (status, bytes, times), and by the writer in sink.note */
	int status;
	size_t bytes;
	uint64_t t_first;	/* first body byte written */
	void (*end_cb)(void *arg); /* once, when the request ends for any reason */
	void *end_arg;
	long serve;	     /* enum listen_serve: what the listener it came on answers */
	bool tls;	     /* it came over TLS (X-Forwarded-Proto) */
	char peer[64];
	char id[CREQ_ID_MAX + 1]; /* the request id: the client's X-Request-Id when it is safe, else made */
	char trace_id[33];	   /* from a valid W3C traceparent, or "" */
	char key_name[64];	   /* the name of the client key it used (never the key), or "" */
};

typedef void (*server_handler)(struct creq *r, void *arg);
/* Looks at a request as soon as its head is read, before its body: false when it answered it (a
 * refusal; the connection then closes without reading the body). */
typedef bool (*server_head_check)(struct creq *r, void *arg);

struct server;

/* Opens every listener of cfg on base. Returns NULL (and logs why) on failure. */
struct server *server_new(struct event_base *base, const struct config *cfg, server_handler h, void *arg);
/* Another worker's server on base, accepting from the same listening sockets as primary (a shared
 * accept queue: whichever worker is free takes the next connection, one at a time). */
struct server *server_new_shared(struct event_base *base, const struct config *cfg, server_handler h, void *arg,
				 struct server *primary);
/* Stops accepting (listeners closed, unix sockets unlinked); open connections continue. */
void server_stop_listening(struct server *s);
/* The drain deadline: every request still open is ended properly - its owner is told the client
 * left, then a stream of events gets an error event and [DONE], an unanswered request a 503 with
 * message, anything else is cut - and each connection closes once its output is out. */
void server_end_all(struct server *s, const char *message);
unsigned server_connections(const struct server *s);
/* At start: raises the descriptor limit to the hard limit, and says (a warning) when it is still
 * below what limits.max_clients can need - two each, a client and its pass-through upstream - and
 * what carpool does past it (503 to new connections). */
void server_fit_descriptors(const struct config *cfg);
void server_free(struct server *s);

struct metrics;
/* Where the server counts requests, streams and slow clients (the worker's metrics). */
void server_set_metrics(struct server *s, struct metrics *m);
/* The worker's id, written in the access log. */
void server_set_worker(struct server *s, int id);
/* The check made on each request's head (with the handler's arg); none by default. */
void server_set_head_check(struct server *s, server_head_check check);

const char *creq_header(const struct creq *r, const char *name);
/* The owner's callback when the client leaves before the response ends; afterwards r is gone. */
void creq_on_gone(struct creq *r, void (*cb)(void *arg), void *arg);

/* cb runs once when r ends: answered, or the client left. */
void creq_on_end(struct creq *r, void (*cb)(void *arg), void *arg);

/* A whole response with Content-Length. extra: further header lines, each ending in "\r\n", or NULL. */
void creq_reply(struct creq *r, int status, const char *ctype, const char *extra, const char *body, size_t len);
/* An OpenAI-style error response. */
void creq_reply_error(struct creq *r, int status, const char *message, const char *type, const char *param,
		      const char *code);
/* Starts a chunked response. */
void creq_stream_start(struct creq *r, int status, const char *ctype, const char *extra);
/* Appends to a started chunked response. A client whose unread output passed the bound is dropped:
 * it gets nothing more, and at the end of the loop turn it is freed and the gone callback made. */
void creq_stream_write(struct creq *r, const char *data, size_t len);
/* Closes the connection without ending the chunked response, so the client sees it incomplete
 * (the upstream broke mid-answer); r must not be used afterwards. */
void creq_abort(struct creq *r);
/* Ends a chunked response; r must not be used afterwards. */
void creq_stream_end(struct creq *r);

#endif
