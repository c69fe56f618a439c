/* http: a pure HTTP/1.1 message parser (RFC 9112); see http.h for the contract. */
#include "carpool/http.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* RFC 9110 section 5.6.2: tchar. */
static const unsigned char tchar[256] = {
	['0' ... '9'] = 1, ['a' ... 'z'] = 1, ['A' ... 'Z'] = 1, ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1,
	['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1, ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1,
	['|'] = 1, ['~'] = 1,
};

/* A byte of a field value (field-vchar, SP, HTAB, obs-text): no NUL, CR, LF or other control. */
static bool value_byte(unsigned char ch) { return ch == '\t' || (ch >= 0x20 && ch != 0x7f); }

bool http_token(const char *s, size_t len)
{
	if (!len)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!tchar[(unsigned char)s[i]])
			return false;
	return true;
}

const char *http_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 408: return "Request Timeout";
	case 411: return "Length Required";
	case 413: return "Payload Too Large";
	case 415: return "Unsupported Media Type";
	case 422: return "Unprocessable Entity";
	case 429: return "Too Many Requests";
	case 431: return "Request Header Fields Too Large";
	case 500: return "Internal Server Error";
	case 501: return "Not Implemented";
	case 502: return "Bad Gateway";
	case 503: return "Service Unavailable";
	case 504: return "Gateway Timeout";
	case 508: return "Loop Detected";
	default: return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
	}
}

static int head_fail(struct http_head *h, int status, const char *why)
{
	h->error_status = status;
	h->error = why;
	return CP_ERROR;
}

void http_head_init(struct http_head *h, enum http_kind kind, size_t max_bytes)
{
	memset(h, 0, sizeof *h);
	h->kind = kind;
	h->max_bytes = max_bytes;
}

void http_head_free(struct http_head *h)
{
	sbuf_free(&h->buf);
	free(h->offs);
	free(h->fields);
	h->offs = NULL;
	h->fields = NULL;
}

/* The request line: method SP request-target SP HTTP-version, each part strict (section 3). */
static int request_line(struct http_head *h, char *s, size_t n)
{
	const char *bad = "Malformed HTTP request line.";
	char *sp1 = memchr(s, ' ', n);
	if (!sp1 || !http_token(s, (size_t)(sp1 - s)))
		return head_fail(h, 400, bad);
	char *t = sp1 + 1, *end = s + n, *sp2 = t;
	while (sp2 < end && *sp2 > 0x20 && *sp2 < 0x7f) /* visible ASCII only: no control, blank or NUL */
		sp2++;
	if (sp2 == t || sp2 == end || *sp2 != ' ')
		return head_fail(h, 400, sp2 < end && *sp2 != ' ' ? "Invalid byte in the request target." : bad);
	const char *v = sp2 + 1;
	if (end - v != 8 || memcmp(v, "HTTP/1.", 7) || (v[7] != '0' && v[7] != '1'))
		return head_fail(h, 400, bad);
	*sp1 = *sp2 = 0;
	h->start[0] = (size_t)(s - h->buf.data);
	h->start[1] = (size_t)(t - h->buf.data);
	h->minor = v[7] - '0';
	return CP_OK;
}

/* The status line: HTTP-version SP 3DIGIT [SP reason-phrase]. */
static int status_line(struct http_head *h, const char *s, size_t n)
{
	if (n < 12 || memcmp(s, "HTTP/1.", 7) || s[7] < '0' || s[7] > '9' || s[8] != ' ')
		return head_fail(h, 502, "not an HTTP/1.x status line");
	int st = 0;
	for (int i = 9; i < 12; i++) {
		if (s[i] < '0' || s[i] > '9')
			return head_fail(h, 502, "not an HTTP/1.x status line");
		st = st * 10 + (s[i] - '0');
	}
	if (st < 100 || (n > 12 && s[12] != ' '))
		return head_fail(h, 502, "not an HTTP/1.x status line");
	for (size_t i = 12; i < n; i++)
		if (!value_byte((unsigned char)s[i]))
			return head_fail(h, 502, "control byte in the status line");
	h->status = st;
	h->minor = s[7] - '0';
	return CP_OK;
}

/* A field line: field-name ":" OWS field-value OWS (section 5); no blank before the colon, no
 * obs-fold, no control byte in the value. */
static int field_line(struct http_head *h, char *s, size_t n)
{
	int st = h->kind == HTTP_REQUEST ? 400 : 502;
	if (s[0] == ' ' || s[0] == '\t')
		return head_fail(h, st, "Obsolete line folding in a header.");
	size_t i = 0;
	while (i < n && tchar[(unsigned char)s[i]])
		i++;
	if (!i || i == n || s[i] != ':')
		return head_fail(h, st, "Malformed HTTP header name.");
	s[i] = 0;
	size_t a = i + 1, b = n;
	while (a < b && (s[a] == ' ' || s[a] == '\t'))
		a++;
	while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
		b--;
	for (size_t k = a; k < b; k++)
		if (!value_byte((unsigned char)s[k]))
			return head_fail(h, st, "Invalid byte in an HTTP header value.");
	s[b] = 0;
	if (h->nfields >= HTTP_MAX_FIELDS)
		return head_fail(h, h->kind == HTTP_REQUEST ? 431 : 502, "Too many HTTP header fields.");
	if (!(h->nfields & (h->nfields - 1))) /* grows at powers of two */
		h->offs = xrealloc(h->offs, (h->nfields ? 2 * h->nfields : 1) * sizeof *h->offs);
	h->offs[h->nfields][0] = (size_t)(s - h->buf.data);
	h->offs[h->nfields][1] = (size_t)(s + a - h->buf.data);
	h->nfields++;
	return CP_OK;
}

bool http_list_has(const char *v, const char *tok)
{
	size_t tl = strlen(tok);
	while (*v) {
		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		size_t l = strcspn(v, ",");
		size_t e = l;
		while (e && (v[e - 1] == ' ' || v[e - 1] == '\t'))
			e--;
		if (e == tl && !strncasecmp(v, tok, tl))
			return true;
		v += l;
	}
	return false;
}

/* Content-Length: 1*DIGIT (no sign, no blank, no list), at most 18 digits. */
static bool parse_length(const char *v, uint64_t *out)
{
	uint64_t n = 0;
	size_t i = 0;
	for (; v[i]; i++) {
		if (v[i] < '0' || v[i] > '9' || i >= 18)
			return false;
		n = n * 10 + (uint64_t)(v[i] - '0');
	}
	*out = n;
	return i > 0;
}

/* The framing fields, each counted: Content-Length, Transfer-Encoding, Host, Connection. */
struct framing {
	const char *cl, *te, *conn;
	unsigned ncl, nte, nhost;
};

static void framing_scan(struct http_head *h, struct framing *f)
{
	memset(f, 0, sizeof *f);
	for (unsigned i = 0; i < h->nfields; i++) {
		const char *n = h->fields[i].name, *v = h->fields[i].value;
		if (!strcasecmp(n, "Content-Length"))
			f->cl = v, f->ncl++;
		else if (!strcasecmp(n, "Transfer-Encoding"))
			f->te = v, f->nte++;
		else if (!strcasecmp(n, "Host"))
			f->nhost++;
		else if (!strcasecmp(n, "Connection"))
			f->conn = v; /* several Connection lines: the last decides, and each is hop-by-hop */
		else if (h->kind == HTTP_REQUEST && !strcasecmp(n, "Expect") && !strcasecmp(v, "100-continue"))
			h->expect_continue = true;
	}
}

/* Framing that two parsers could read two ways: refused with status. */
static int framing_conflict(struct http_head *h, const struct framing *f, int status)
{
	if (f->ncl > 1)
		return head_fail(h, status, "More than one Content-Length header.");
	if (f->nte > 1)
		return head_fail(h, status, "More than one Transfer-Encoding header.");
	if (f->te && f->cl)
		return head_fail(h, status, "Both Transfer-Encoding and Content-Length.");
	return CP_OK;
}

/* How a request's body comes (section 6.3); anything ambiguous is refused, never guessed. */
static int request_framing(struct http_head *h)
{
	struct framing f;
	framing_scan(h, &f);
	if (f.nhost > 1)
		return head_fail(h, 400, "More than one Host header.");
	if (!f.nhost && h->minor == 1)
		return head_fail(h, 400, "Missing Host header.");
	if (framing_conflict(h, &f, 400) != CP_OK)
		return CP_ERROR;
	h->keepalive = h->minor == 1;
	if (f.conn && http_list_has(f.conn, "close"))
		h->keepalive = false;
	else if (f.conn && http_list_has(f.conn, "keep-alive"))
		h->keepalive = true;
	if (f.te) {
		if (h->minor == 0)
			return head_fail(h, 400, "Transfer-Encoding in an HTTP/1.0 request.");
		if (strcasecmp(f.te, "chunked"))
			return head_fail(h, 501, "Unsupported Transfer-Encoding.");
		h->body = HTTP_BODY_CHUNKED;
	} else if (f.cl) {
		if (!parse_length(f.cl, &h->content_length))
			return head_fail(h, 400, "Invalid Content-Length.");
		h->body = h->content_length ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
	} else {
		h->body = HTTP_BODY_NONE;
	}
	return CP_OK;
}

int http_head_response_framing(struct http_head *h, bool no_body)
{
	struct framing f;
	framing_scan(h, &f);
	h->keepalive = h->minor >= 1 && !(f.conn && http_list_has(f.conn, "close"));
	if (framing_conflict(h, &f, 502) != CP_OK)
		return CP_ERROR;
	if (no_body || h->status < 200 || h->status == 204 || h->status == 304) {
		h->body = HTTP_BODY_NONE;
		return CP_OK;
	}
	if (f.te) {
		/* chunked must be the last coding; otherwise the body runs to the close */
		size_t l = strlen(f.te);
		bool last = l >= 7 && !strcasecmp(f.te + l - 7, "chunked") && (l == 7 || f.te[l - 8] == ' ' ||
									   f.te[l - 8] == ',' || f.te[l - 8] == '\t');
		h->body = last ? HTTP_BODY_CHUNKED : HTTP_BODY_EOF;
		if (!last)
			h->keepalive = false;
	} else if (f.cl) {
		if (!parse_length(f.cl, &h->content_length))
			return head_fail(h, 502, "an invalid Content-Length");
		h->body = h->content_length ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
	} else {
		h->body = HTTP_BODY_EOF;
		h->keepalive = false;
	}
	return CP_OK;
}

/* The head is complete: fields get their pointers (buf no longer moves), then the framing. */
static int head_done(struct http_head *h)
{
	h->done = true;
	h->fields = xcalloc(h->nfields ? h->nfields : 1, sizeof *h->fields);
	for (unsigned i = 0; i < h->nfields; i++) {
		h->fields[i].name = h->buf.data + h->offs[i][0];
		h->fields[i].value = h->buf.data + h->offs[i][1];
	}
	if (h->kind == HTTP_RESPONSE)
		return CP_OK;
	h->method = h->buf.data + h->start[0];
	h->target = h->buf.data + h->start[1];
	return request_framing(h);
}

/* One complete line of the head, s[0..n) with its line end already cut off. */
static int head_line(struct http_head *h, char *s, size_t n)
{
	if (memchr(s, '\r', n))
		return head_fail(h, h->kind == HTTP_REQUEST ? 400 : 502, "A bare CR in the HTTP head.");
	if (!h->started) {
		if (!n) /* blank lines before a request line are ignored (section 2.2) */
			return CP_AGAIN;
		h->started = true;
		return h->kind == HTTP_REQUEST ? request_line(h, s, n) : status_line(h, s, n);
	}
	if (!n)
		return head_done(h);
	return field_line(h, s, n);
}

int http_head_feed(struct http_head *h, const char *data, size_t len, size_t *used)
{
	*used = 0;
	if (h->done)
		return CP_OK;
	while (*used < len) {
		const char *p = data + *used;
		size_t avail = len - *used;
		const char *lf = memchr(p, '\n', avail);
		size_t take = lf ? (size_t)(lf - p) + 1 : avail;
		if (h->buf.len + take > h->max_bytes)
			return head_fail(h, h->kind == HTTP_REQUEST ? 431 : 502,
					 h->kind == HTTP_REQUEST ? "Request header fields too large." : "Response head too large.");
		sbuf_add(&h->buf, p, take);
		*used += take;
		if (!lf)
			return CP_AGAIN;
		char *s = h->buf.data + h->line;
		size_t n = h->buf.len - h->line - 1; /* without the LF */
		if (n && s[n - 1] == '\r')
			n--;
		s[n] = 0;
		h->line = h->buf.len;
		int rc = head_line(h, s, n);
		if (rc != CP_AGAIN && rc != CP_OK)
			return rc;
		if (h->done)
			return CP_OK;
	}
	return CP_AGAIN;
}

const char *http_head_get(const struct http_head *h, const char *name)
{
	for (unsigned i = 0; i < h->nfields; i++)
		if (!strcasecmp(h->fields[i].name, name))
			return h->fields[i].value;
	return NULL;
}

/* --- chunked bodies ----------------------------------------------------------------------------- */

enum { CK_SIZE, CK_EXT, CK_SIZE_LF, CK_DATA, CK_DATA_CR, CK_DATA_LF, CK_TRAILER, CK_TRAILER_NAME, CK_TRAILER_VALUE,
       CK_TRAILER_LF, CK_END_LF, CK_DONE };

void http_chunked_init(struct http_chunked *d, uint64_t max_total, size_t max_trailer)
{
	memset(d, 0, sizeof *d);
	d->max_total = max_total;
	d->max_trailer = max_trailer;
}

static int chunk_fail(struct http_chunked *d, int status, const char *why)
{
	d->error_status = status;
	d->error = why;
	return CP_ERROR;
}

static int hexval(unsigned char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch |= 0x20;
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* One framing byte (not chunk data). CP_OK: the body ended with it. */
static int chunk_byte(struct http_chunked *d, unsigned char ch)
{
	static const char *const bad = "Malformed chunked body.";
	switch (d->state) {
	case CK_SIZE: {
		int x = hexval(ch);
		if (x >= 0) {
			if (d->left >> 60)
				return chunk_fail(d, 400, "Chunk size out of range.");
			d->left = d->left << 4 | (uint64_t)x;
			if (d->left > d->max_total - d->total)
				return chunk_fail(d, 413, "The request body is larger than the limit.");
			if (++d->digits > 16)
				return chunk_fail(d, 400, "Chunk size out of range.");
			return CP_AGAIN;
		}
		if (!d->digits)
			return chunk_fail(d, 400, bad);
		d->state = ch == '\r' ? CK_SIZE_LF : (ch == ';' || ch == ' ' || ch == '\t') ? CK_EXT : -1;
		return d->state < 0 ? chunk_fail(d, 400, bad) : CP_AGAIN;
	}
	case CK_EXT:
		if (ch == '\r')
			d->state = CK_SIZE_LF;
		else if (!value_byte(ch))
			return chunk_fail(d, 400, bad);
		return CP_AGAIN;
	case CK_SIZE_LF:
		if (ch != '\n')
			return chunk_fail(d, 400, bad);
		d->total += d->left;
		d->line = 0;
		d->state = d->left ? CK_DATA : CK_TRAILER;
		return CP_AGAIN;
	case CK_DATA_CR:
		d->state = CK_DATA_LF;
		return ch == '\r' ? CP_AGAIN : chunk_fail(d, 400, "Bytes after a chunk's data.");
	case CK_DATA_LF:
		d->state = CK_SIZE;
		d->digits = 0;
		d->left = 0;
		d->line = 0;
		return ch == '\n' ? CP_AGAIN : chunk_fail(d, 400, "Bytes after a chunk's data.");
	case CK_TRAILER:
		if (ch == '\r') {
			d->state = CK_END_LF;
			return CP_AGAIN;
		}
		if (++d->ntrailers > HTTP_MAX_FIELDS)
			return chunk_fail(d, 431, "Too many trailer fields.");
		d->state = CK_TRAILER_NAME;
		d->digits = 0; /* the name's length */
		__attribute__((fallthrough)); /* the first byte of a name */
	case CK_TRAILER_NAME:
		if (ch == ':' && d->digits)
			d->state = CK_TRAILER_VALUE;
		else if (tchar[ch])
			d->digits++;
		else
			return chunk_fail(d, 400, "Malformed trailer field.");
		return CP_AGAIN;
	case CK_TRAILER_VALUE:
		if (ch == '\r')
			d->state = CK_TRAILER_LF;
		else if (!value_byte(ch))
			return chunk_fail(d, 400, "Malformed trailer field.");
		return CP_AGAIN;
	case CK_TRAILER_LF:
		d->state = CK_TRAILER;
		return ch == '\n' ? CP_AGAIN : chunk_fail(d, 400, bad);
	case CK_END_LF:
		if (ch != '\n')
			return chunk_fail(d, 400, bad);
		d->state = CK_DONE;
		return CP_OK;
	default:
		return chunk_fail(d, 400, bad);
	}
}

/* A whole size line at s, hex digits and CRLF, taken as chunk_byte would take it byte by byte (its
 * 16 digits at most never pass "out of range"; left only grows, so the limit is checked once):
 * true, *used advanced. False: the byte-by-byte path takes it (nothing changed). */
static bool size_line(struct http_chunked *d, const char *s, size_t n, size_t *used)
{
	/* a hex digit's value plus one; 0 for any other byte */
	static const unsigned char hex1[256] = {
		['0'] = 1,  ['1'] = 2,	['2'] = 3,  ['3'] = 4,	['4'] = 5,  ['5'] = 6,	['6'] = 7,  ['7'] = 8,
		['8'] = 9,  ['9'] = 10, ['a'] = 11, ['b'] = 12, ['c'] = 13, ['d'] = 14, ['e'] = 15, ['f'] = 16,
		['A'] = 11, ['B'] = 12, ['C'] = 13, ['D'] = 14, ['E'] = 15, ['F'] = 16,
	};
	uint64_t v = 0;
	size_t k = 0, lim = n < 16 ? n : 16;
	unsigned x;
	while (k < lim && (x = hex1[(unsigned char)s[k]])) {
		v = v << 4 | (x - 1);
		k++;
	}
	if (!k || k + 2 > n || s[k] != '\r' || s[k + 1] != '\n' || v > d->max_total - d->total)
		return false;
	*used += k + 2;
	d->left = v;
	d->digits = (unsigned)k;
	d->total += v;
	d->line = 0;
	d->state = v ? CK_DATA : CK_TRAILER;
	return true;
}

int http_chunked_feed(struct http_chunked *d, const char *in, size_t len, size_t *used, const char **data,
		      size_t *dlen)
{
	*used = 0;
	*dlen = 0;
	if (d->state == CK_DONE)
		return CP_OK;
	while (*used < len) {
		if (d->state == CK_DATA) {
			size_t n = len - *used;
			if (n > d->left)
				n = (size_t)d->left;
			*data = in + *used;
			*dlen = n;
			*used += n;
			d->left -= n;
			if (!d->left)
				d->state = CK_DATA_CR;
			return CP_AGAIN;
		}
		/* the usual framing at once: the CRLF after a chunk's data, and a size line of hex digits
		 * alone; anything else (extensions, trailers, a split, an error) goes byte by byte below */
		if (d->state == CK_DATA_CR && len - *used >= 2 && in[*used] == '\r' && in[*used + 1] == '\n') {
			*used += 2;
			d->state = CK_SIZE;
			d->digits = 0;
			d->left = 0;
			d->line = 0;
			continue;
		}
		if (d->state == CK_SIZE && !d->digits && size_line(d, in + *used, len - *used, used))
			continue;
		/* a size line, or all the trailer lines, are bounded */
		size_t bound = d->state >= CK_TRAILER ? d->max_trailer : HTTP_MAX_CHUNK_LINE;
		if (++d->line > bound)
			return chunk_fail(d, d->state >= CK_TRAILER ? 431 : 400,
					  d->state >= CK_TRAILER ? "Trailer fields too large." : "Chunk line too long.");
		int rc = chunk_byte(d, (unsigned char)in[(*used)++]);
		if (rc != CP_AGAIN)
			return rc;
	}
	return CP_AGAIN;
}

/* --- request targets ---------------------------------------------------------------------------- */

/* 1 for ".", 2 for "..", each dot also written %2e; 0 for any other segment. */
static int dot_segment(const char *s, size_t n)
{
	int dots = 0;
	for (size_t i = 0; i < n; dots++) {
		if (s[i] == '.')
			i++;
		else if (s[i] == '%' && i + 2 < n && s[i + 1] == '2' && (s[i + 2] | 0x20) == 'e')
			i += 3;
		else
			return 0;
	}
	return dots <= 2 ? dots : 0;
}

int http_normalize_target(char *t)
{
	if (t[0] != '/')
		return CP_ERROR;
	size_t plen = strcspn(t, "?");
	for (size_t i = 0; i < plen; i++) {
		if (t[i] == '#' || t[i] == '\\')
			return CP_ERROR;
		if (t[i] != '%')
			continue;
		if (i + 2 >= plen || hexval((unsigned char)t[i + 1]) < 0 || hexval((unsigned char)t[i + 2]) < 0)
			return CP_ERROR;
		int v = hexval((unsigned char)t[i + 1]) << 4 | hexval((unsigned char)t[i + 2]);
		if (v == '/' || v == '\\' || v == 0)
			return CP_ERROR;
	}
	size_t i = 0, o = 0;
	bool dir = false; /* the path must end in "/" (its last segment was empty or a dot segment) */
	while (i < plen) {
		size_t j = i + 1;
		while (j < plen && t[j] != '/')
			j++;
		size_t sl = j - i - 1;
		int dots = sl ? dot_segment(t + i + 1, sl) : 0;
		dir = !sl || dots;
		if (dots == 2) {
			if (!o)
				return CP_ERROR; /* above the root */
			while (t[--o] != '/')
				;
		} else if (sl && !dots) {
			memmove(t + o, t + i, sl + 1);
			o += sl + 1;
		}
		i = j;
	}
	if (dir || !o)
		t[o++] = '/';
	memmove(t + o, t + plen, strlen(t + plen) + 1);
	return CP_OK;
}
