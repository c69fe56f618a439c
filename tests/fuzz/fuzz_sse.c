/* Fuzz target: the SSE parser gives the same events however the bytes are split across reads. */
#include "carpool/sse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int collect(void *arg, const struct sse_event *ev)
{
	struct sbuf *b = arg;
	sbuf_add(b, ev->is_error ? "E" : "D", 1);
	sbuf_add(b, ev->name, strlen(ev->name));
	sbuf_add(b, "\x01", 1);
	sbuf_add(b, ev->data, ev->len);
	sbuf_add(b, "\x02", 1);
	return CP_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned step = 1 + data[0] % 17; /* how the second pass splits the input */
	const char *in = (const char *)data + 1;
	size_t len = size - 1;
	struct sse_parser a, b, c, d;
	struct sbuf ea = {0}, eb = {0}, ec = {0}, ed = {0};
	sse_init(&a, 4096);
	sse_init(&b, 4096);
	sse_init(&c, 4096);
	sse_init(&d, 4096);
	sse_borrow(&c, true); /* events in place where they can be: the same events as copied */
	sse_borrow(&d, true);
	int ra = sse_feed(&a, in, len, collect, &ea);
	int rb = CP_OK;
	for (size_t i = 0; i < len && rb == CP_OK; i += step)
		rb = sse_feed(&b, in + i, len - i < step ? len - i : step, collect, &eb);
	int rc = sse_feed(&c, in, len, collect, &ec);
	int rd = CP_OK;
	for (size_t i = 0; i < len && rd == CP_OK; i += step)
		rd = sse_feed(&d, in + i, len - i < step ? len - i : step, collect, &ed);
	/* the same outcome, and the same events up to it */
	if (ra != rb || ea.len != eb.len || (ea.len && memcmp(ea.data, eb.data, ea.len)))
		abort();
	if (ra != rc || ea.len != ec.len || (ea.len && memcmp(ea.data, ec.data, ea.len)))
		abort();
	if (ra != rd || ea.len != ed.len || (ea.len && memcmp(ea.data, ed.data, ea.len)))
		abort();
	sse_free(&a);
	sse_free(&b);
	sse_free(&c);
	sse_free(&d);
	sbuf_free(&ea);
	sbuf_free(&eb);
	sbuf_free(&ec);
	sbuf_free(&ed);
	return 0;
}
