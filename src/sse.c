/* sse: incremental Server-Sent Events parser. */
#include "carpool/sse.h"

#include <stdlib.h>
#include <string.h>

void sse_init(struct sse_parser *p, size_t max_event)
{
	memset(p, 0, sizeof *p);
	p->max_event = max_event;
}

void sse_borrow(struct sse_parser *p, bool on) { p->borrow = on; }

void sse_free(struct sse_parser *p)
{
	sbuf_free(&p->line);
	sbuf_free(&p->data);
}

static int dispatch(struct sse_parser *p, sse_event_cb cb, void *arg)
{
	int rc = CP_OK;
	if (p->has_data) {
		struct sse_event ev = {p->data.data ? p->data.data : "", p->data.len, p->name, p->is_error};
		rc = cb(arg, &ev);
	}
	sbuf_reset(&p->data);
	p->has_data = false;
	p->is_error = false;
	p->name[0] = 0;
	return rc;
}

/* One complete line (without its end). An empty line ends the event. */
static int line(struct sse_parser *p, const char *s, size_t n, sse_event_cb cb, void *arg)
{
	if (n == 0)
		return dispatch(p, cb, arg);
	if (s[0] == ':')
		return CP_OK; /* comment */
	const char *colon = memchr(s, ':', n);
	size_t flen = colon ? (size_t)(colon - s) : n;
	const char *v = colon ? colon + 1 : s + n;
	size_t vlen = colon ? n - flen - 1 : 0;
	if (vlen && *v == ' ') {
		v++;
		vlen--;
	}
	bool is_data = flen == 4 && !memcmp(s, "data", 4);
	bool is_err = flen == 5 && !memcmp(s, "error", 5);
	if (is_data || is_err) {
		if (p->has_data)
			sbuf_add(&p->data, "\n", 1);
		sbuf_add(&p->data, v, vlen);
		p->has_data = true;
		if (is_err)
			p->is_error = true;
		if (p->data.len > p->max_event)
			return CP_ERROR;
	} else if (flen == 5 && !memcmp(s, "event", 5)) {
		size_t m = vlen < sizeof p->name - 1 ? vlen : sizeof p->name - 1;
		memcpy(p->name, v, m);
		p->name[m] = 0;
	}
	/* id:, retry: and unknown fields are ignored, as the SSE specification says. */
	return CP_OK;
}

/* When line [i, j) of buf is followed, in buf, by its end and an empty line ("\n\n" or
 * "\r\n\r\n"), the offset past them; else 0. Other line ends (a lone CR, mixed ones) take the
 * general path. */
static size_t lone_event(const char *buf, size_t j, size_t len)
{
	if (j == len)
		return 0;
	if (buf[j] == '\n')
		return j + 1 < len && buf[j + 1] == '\n' ? j + 2 : 0;
	/* buf[j] is CR */
	return j + 3 < len && !memcmp(buf + j + 1, "\n\r\n", 3) ? j + 4 : 0;
}

/* The event that is line s alone, handed in place (sse_borrow); *rc is what cb returned. False: the
 * line is not a data: or error: line within the cap, and the general path takes it. */
static bool borrowed(struct sse_parser *p, const char *s, size_t n, sse_event_cb cb, void *arg, int *rc)
{
	size_t flen;
	if (n >= 5 && !memcmp(s, "data:", 5))
		flen = 4;
	else if (n >= 6 && !memcmp(s, "error:", 6))
		flen = 5;
	else
		return false;
	const char *v = s + flen + 1;
	size_t vlen = n - flen - 1;
	if (vlen && *v == ' ') {
		v++;
		vlen--;
	}
	if (vlen > p->max_event)
		return false;
	struct sse_event ev = {v, vlen, p->name, flen == 5};
	*rc = cb(arg, &ev);
	p->name[0] = 0;
	return true;
}

int sse_feed(struct sse_parser *p, const char *buf, size_t len, sse_event_cb cb, void *arg)
{
	size_t i = 0;
	while (i < len) {
		if (p->after_cr) {
			p->after_cr = false;
			if (buf[i] == '\n') {
				i++;
				continue;
			}
		}
		/* find the next line end: LF with memchr, then a CR before it, if any */
		const char *lf = memchr(buf + i, '\n', len - i);
		size_t lim = lf ? (size_t)(lf - buf) : len;
		const char *cr = memchr(buf + i, '\r', lim - i);
		size_t j = cr ? (size_t)(cr - buf) : lim;
		size_t after; /* the input's offset past the empty line that follows line [i, j) */
		int rc;
		if (p->borrow && !p->line.len && !p->has_data && (after = lone_event(buf, j, len)) &&
		    borrowed(p, buf + i, j - i, cb, arg, &rc)) {
			i = after;
			if (rc != CP_OK)
				return rc;
			continue;
		}
		if (j == len) {
			sbuf_add(&p->line, buf + i, len - i);
			if (p->line.len > p->max_event)
				return CP_ERROR;
			return CP_OK;
		}
		if (p->line.len) {
			sbuf_add(&p->line, buf + i, j - i);
			if (p->line.len > p->max_event)
				return CP_ERROR;
			rc = line(p, p->line.data, p->line.len, cb, arg);
			sbuf_reset(&p->line);
		} else {
			rc = line(p, buf + i, j - i, cb, arg);
		}
		if (buf[j] == '\r')
			p->after_cr = true;
		i = j + 1;
		if (rc != CP_OK)
			return rc;
	}
	return CP_OK;
}
