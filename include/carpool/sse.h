/* sse: incremental Server-Sent Events parser. Pure: bytes in, events out; no I/O.
 *
 * Handles events split across reads at any byte, LF / CRLF / CR line ends, comments, and the
 * non-standard `error:` field that llama.cpp's server uses for mid-stream failures. */
#ifndef CARPOOL_SSE_H
#define CARPOOL_SSE_H

#include "carpool/common.h"

struct sse_event {
	const char *data; /* the joined data lines, NUL-terminated (but see sse_borrow) */
	size_t len;
	const char *name; /* the event: field, "" when absent */
	bool is_error;	  /* the payload came in an `error:` field (llama.cpp) */
};

/* Called once per complete event; a non-CP_OK return stops sse_feed, which returns it. */
typedef int (*sse_event_cb)(void *arg, const struct sse_event *ev);

struct sse_parser {
	struct sbuf line;  /* the incomplete current line */
	struct sbuf data;  /* data of the event being built */
	char name[64];
	bool has_data;
	bool is_error;
	bool after_cr;	   /* last byte seen was CR: a following LF belongs to it */
	bool borrow;	   /* events may point into the input, not NUL-terminated (sse_borrow) */
	size_t max_event;  /* cap on a pending event's size */
};

void sse_init(struct sse_parser *p, size_t max_event);
/* Lets p hand an event that is one data: (or error:) line followed by an empty line, both whole in
 * one feed, as a pointer into the input instead of a copy: such an event's data is then NOT
 * NUL-terminated (only len bytes are its own). The events' bytes are the same either way. */
void sse_borrow(struct sse_parser *p, bool on);
/* Feeds bytes; returns CP_OK, CP_ERROR if an event or line outgrows max_event, or what cb returned. */
int sse_feed(struct sse_parser *p, const char *buf, size_t len, sse_event_cb cb, void *arg);
void sse_free(struct sse_parser *p);

#endif
