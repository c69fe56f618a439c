/* sink: where the answer to one client request goes.
 *
 * The batcher and the pass-through write an answer - a whole reply, or a streamed one (start, write
 * ..., end; abort when it breaks) - to a struct sink and know nothing of what is behind it: the HTTP
 * server's client connection (server.c), or a client of another worker (relay.c). The writer notes
 * what the access log needs (the batch) in sink->note, and hears through the gone callback that the
 * client left before the answer ended; after end, reply or abort the sink must not be used again. */
#ifndef CARPOOL_SINK_H
#define CARPOOL_SINK_H

#include "carpool/common.h"

#include <stdlib.h>
#include <string.h>

struct sink;

struct sink_ops {
	/* Starts a chunked (streamed) response. extra: further header lines, each ending in "\r\n", or NULL. */
	void (*start)(struct sink *s, int status, const char *ctype, const char *extra);
	/* Appends to a started stream. A client that reads too slowly is dropped: it gets nothing more,
	 * and the gone callback is made from the loop at the end of the turn, never under the writer's
	 * feet (s stays valid until then, and ending it before then is harmless). */
	void (*write)(struct sink *s, const char *data, size_t len);
	/* Ends a stream. */
	void (*end)(struct sink *s);
	/* A whole response with Content-Length. */
	void (*reply)(struct sink *s, int status, const char *ctype, const char *extra, const char *body, size_t len);
	/* Cuts a stream short, so that the client sees it incomplete. */
	void (*abort)(struct sink *s);
};

/* What the writer notes for the access log. */
struct sink_note {
	uint64_t batch_id;
	uint64_t queue_us; /* time in the batch queue */
	unsigned batch_size;
	unsigned prompts;
	const char *upstream; /* a configuration string: lives as long as the process */
};

struct sink {
	const struct sink_ops *ops;
	struct sink_note note;
	void (*gone_cb)(void *arg); /* the client left before the answer ended; afterwards s is gone */
	void *gone_arg;
};

static inline void sink_on_gone(struct sink *s, void (*cb)(void *arg), void *arg)
{
	s->gone_cb = cb;
	s->gone_arg = arg;
}

static inline void sink_start(struct sink *s, int status, const char *ctype, const char *extra)
{
	s->ops->start(s, status, ctype, extra);
}

static inline void sink_write(struct sink *s, const char *data, size_t len) { s->ops->write(s, data, len); }

static inline void sink_end(struct sink *s) { s->ops->end(s); }

static inline void sink_reply(struct sink *s, int status, const char *ctype, const char *extra, const char *body,
			      size_t len)
{
	s->ops->reply(s, status, ctype, extra, body, len);
}

static inline void sink_abort(struct sink *s) { s->ops->abort(s); }

/* Ends a stream that has started with an error event (an error JSON) and its [DONE]. */
static inline void sink_stream_error(struct sink *s, const char *json, size_t len)
{
	struct sbuf b = {0};
	sbuf_adds(&b, "data: ");
	sbuf_add(&b, json, len);
	sbuf_adds(&b, "\n\ndata: [DONE]\n\n");
	sink_write(s, b.data, b.len);
	sink_end(s);
	sbuf_free(&b);
}

/* An OpenAI-style error response. */
static inline void sink_reply_error(struct sink *s, int status, const char *message, const char *type,
				    const char *param, const char *code)
{
	char *body = openai_error_json(message, type, param, code);
	sink_reply(s, status, "application/json", NULL, body, strlen(body));
	free(body);
}

#endif
