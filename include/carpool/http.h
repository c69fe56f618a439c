/* http: a pure HTTP/1.1 message parser (RFC 9112) - the head of a request or a response, the
 * framing rules that decide how its body comes, a chunked decoder, and request-target
 * normalisation. Bytes in, results out: no I/O and no replies, so that it can be unit-tested and
 * fuzzed alone, and every state it keeps is bounded.
 *
 * Each step returns CP_OK (this part of the message is complete), CP_AGAIN (all the input given was
 * taken; more is needed) or CP_ERROR (the message is malformed: `status` and `error` say what to
 * answer, and the connection must close - the framing of what follows cannot be trusted). */
#ifndef CARPOOL_HTTP_H
#define CARPOOL_HTTP_H

#include "carpool/common.h"

#define HTTP_MAX_FIELDS 100	    /* header lines in one head (and trailer lines after a chunked body) */
#define HTTP_MAX_CHUNK_LINE 4096    /* a chunk-size line with its extensions */

enum http_kind { HTTP_REQUEST, HTTP_RESPONSE };

/* How the body after a head is framed. */
enum http_body { HTTP_BODY_NONE, HTTP_BODY_LENGTH, HTTP_BODY_CHUNKED, HTTP_BODY_EOF };

struct http_field {
	const char *name; /* NUL-terminated, inside the head's buffer */
	const char *value; /* without surrounding blanks; NUL-terminated */
};

/* One message head being read, and what it says once complete. */
struct http_head {
	enum http_kind kind;
	size_t max_bytes;    /* bound on the whole head, start line and header lines (431 past it) */
	/* the start line */
	const char *method;  /* requests */
	const char *target;  /* requests: as sent */
	int status;	     /* responses */
	int minor;	     /* HTTP/1.minor */
	struct http_field *fields;
	unsigned nfields;
	/* framing, decided when the head is complete */
	enum http_body body;
	uint64_t content_length;
	bool keepalive;
	bool expect_continue;
	/* the refusal, on CP_ERROR */
	int error_status;
	const char *error;
	/* parser state: fields are kept as offsets into buf (which may move) until the head is done */
	struct sbuf buf;       /* the head's bytes so far */
	size_t line;	       /* where the current line starts */
	size_t (*offs)[2];
	size_t start[2];       /* the method and the target */
	bool started;	       /* the start line has been read */
	bool done;
};

/* Prepares h to read a head of kind, at most max_bytes long. */
void http_head_init(struct http_head *h, enum http_kind kind, size_t max_bytes);
/* Releases what h holds; h may be initialised again. */
void http_head_free(struct http_head *h);
/* Takes bytes of a head: *used of the len given (only the head's own bytes: after CP_OK the rest is
 * the body or the next message). Each byte is looked at once, whatever the split of the input. */
int http_head_feed(struct http_head *h, const char *data, size_t len, size_t *used);
/* The value of field name (case-insensitive), the first if repeated; NULL if absent. */
const char *http_head_get(const struct http_head *h, const char *name);
/* For a response head: what the request was and what came back decide the framing; call after
 * CP_OK. no_body: the request was HEAD (or the status says there is none). */
int http_head_response_framing(struct http_head *h, bool no_body);

/* A chunked body being decoded (RFC 9112 section 7.1): size lines, data, CRLF, trailers. */
struct http_chunked {
	uint64_t max_total; /* decoded bytes allowed (413 past it) */
	size_t max_trailer; /* bytes of trailer lines allowed (431 past them) */
	uint64_t total;
	/* the refusal, on CP_ERROR */
	int error_status;
	const char *error;
	/* decoder state */
	int state;
	uint64_t left;	  /* of the current chunk's data */
	size_t line;	  /* bytes of the current size line, or of all trailer lines */
	unsigned digits;
	unsigned ntrailers;
};

void http_chunked_init(struct http_chunked *d, uint64_t max_total, size_t max_trailer);
/* Decodes from in: *used bytes taken; when body bytes are found, [*data, *data + *dlen) is a piece of
 * in that holds them (call again with the rest). CP_OK: the body ended (after its trailers). */
int http_chunked_feed(struct http_chunked *d, const char *in, size_t len, size_t *used, const char **data,
		      size_t *dlen);

/* Whether the comma-separated list v (a Connection header) names token tok, case-insensitive. */
bool http_list_has(const char *v, const char *tok);
/* Whether s is an RFC 9110 token (a method, a field name). */
bool http_token(const char *s, size_t len);

/* Normalises the path of an origin-form target in place (RFC 3986 section 5.2.4): "." and ".."
 * segments are removed - also when written %2e - and "//" runs are merged, so that what is
 * forwarded under an upstream's path prefix stays under it. CP_ERROR: the path climbs above the
 * root, or encodes a "/" or a NUL (%2f, %5c, %00), which could not be checked the same way by every
 * server. */
int http_normalize_target(char *target);

/* The reason phrase of a status code. */
const char *http_reason(int status);

#endif
