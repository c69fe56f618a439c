/* Fuzz target: the HTTP/1.1 parser reads a connection's stream of messages (requests or responses,
 * kept alive one after another) the same way however the bytes are split, never reads past what it
 * was given, keeps its bounds, and a normalised target has no dot segment left. */
#include "carpool/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 2048
#define MAX_BODY 4096

/* Reads every message of in[0..len) in pieces of step bytes (0: whole) and writes a transcript of
 * what was understood into t: heads, decoded bodies, the way it ended. */
static void read_stream(const char *in, size_t len, size_t step, enum http_kind kind, struct sbuf *t)
{
	size_t off = 0;
	while (off < len) {
		struct http_head h;
		http_head_init(&h, kind, MAX_HEAD);
		int rc = CP_AGAIN;
		while (off < len && rc == CP_AGAIN) {
			size_t n = step && len - off > step ? step : len - off, used;
			rc = http_head_feed(&h, in + off, n, &used);
			if (used > n || (rc == CP_AGAIN && used != n) || h.buf.len > MAX_HEAD)
				abort();
			off += used;
		}
		if (rc == CP_OK && kind == HTTP_RESPONSE)
			rc = http_head_response_framing(&h, false);
		if (rc != CP_OK) {
			sbuf_printf(t, "head %d %d|", rc, h.error_status);
			http_head_free(&h);
			return;
		}
		sbuf_printf(t, "head %u %d %d %llu|", h.nfields, h.body, h.keepalive, (unsigned long long)h.content_length);
		if (kind == HTTP_REQUEST) {
			char *target = xstrdup(h.target);
			size_t tl = strlen(target);
			if (http_normalize_target(target) == CP_OK) {
				size_t pl = strcspn(target, "?");
				if (target[0] != '/' || strlen(target) > tl + 1 || memmem(target, pl, "//", 2))
					abort();
				for (size_t i = 0; i < pl; i++) { /* each segment: none is "." or ".." */
					size_t sl = strcspn(target + i + 1, "/?");
					if ((sl == 1 && target[i + 1] == '.') || (sl == 2 && !strncmp(target + i + 1, "..", 2)))
						abort();
					i += sl;
				}
				sbuf_printf(t, "target %s|", target);
			}
			free(target);
		}
		enum http_body body = h.body;
		uint64_t cl = h.content_length;
		http_head_free(&h);
		if (body == HTTP_BODY_LENGTH) {
			if (cl > len - off) {
				sbuf_adds(t, "short|");
				return;
			}
			off += (size_t)cl;
		} else if (body == HTTP_BODY_EOF) {
			sbuf_printf(t, "eof %zu|", len - off);
			return;
		} else if (body == HTTP_BODY_CHUNKED) {
			struct http_chunked d;
			http_chunked_init(&d, MAX_BODY, MAX_HEAD);
			rc = CP_AGAIN;
			while (off < len && rc == CP_AGAIN) {
				size_t n = step && len - off > step ? step : len - off, used, dlen;
				const char *data;
				rc = http_chunked_feed(&d, in + off, n, &used, &data, &dlen);
				if (used > n || (dlen && (data < in + off || data + dlen > in + off + used)))
					abort();
				sbuf_add(t, data, dlen);
				off += used;
			}
			if (d.total > MAX_BODY)
				abort();
			if (rc != CP_OK) {
				sbuf_printf(t, "chunked %d %d|", rc, d.error_status);
				return;
			}
		}
	}
	sbuf_adds(t, "end|");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum http_kind kind = data[0] & 1 ? HTTP_RESPONSE : HTTP_REQUEST;
	size_t step = 1 + (data[0] >> 1) % 23;
	const char *in = (const char *)data + 1;
	struct sbuf a = {0}, b = {0}, c = {0};
	read_stream(in, size - 1, 0, kind, &a);
	read_stream(in, size - 1, step, kind, &b);
	if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len)))
		abort();
	/* one byte at a time, the chunked decoder's whole-line paths never run: the reference for them */
	read_stream(in, size - 1, 1, kind, &c);
	if (a.len != c.len || (a.len && memcmp(a.data, c.data, a.len)))
		abort();
	sbuf_free(&a);
	sbuf_free(&b);
	sbuf_free(&c);
	return 0;
}
