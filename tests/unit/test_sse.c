/* Unit tests for src/sse.c: the incremental SSE parser. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/sse.h"

#define MAX_EV 64

struct rec {
	struct {
		char *data;
		size_t len;
		char name[64];
		bool is_error;
	} ev[MAX_EV];
	int n;
	int stop_after; /* return CP_ERROR from the callback once n reaches this (0: never) */
	int stop_rc;
};

/* Keeps a copy of event e in r; the callback's answer. */
static int record(struct rec *r, const struct sse_event *e)
{
	assert_true(r->n < MAX_EV);
	r->ev[r->n].data = xstrndup(e->data, e->len);
	r->ev[r->n].len = e->len;
	snprintf(r->ev[r->n].name, sizeof r->ev[r->n].name, "%s", e->name ? e->name : "(null)");
	r->ev[r->n].is_error = e->is_error;
	r->n++;
	if (r->stop_after && r->n >= r->stop_after)
		return r->stop_rc;
	return CP_OK;
}

static int on_event(void *arg, const struct sse_event *e)
{
	assert_non_null(e->data);
	assert_int_equal(e->data[e->len], '\0'); /* NUL-terminated as promised */
	return record(arg, e);
}

static void rec_free(struct rec *r)
{
	for (int i = 0; i < r->n; i++)
		free(r->ev[i].data);
	r->n = 0;
}

/* Parses s in one feed. */
static int parse_once(const char *s, size_t len, struct rec *r, size_t max)
{
	struct sse_parser p;
	sse_init(&p, max);
	int rc = sse_feed(&p, s, len, on_event, r);
	sse_free(&p);
	return rc;
}

static void assert_same(const struct rec *a, const struct rec *b)
{
	assert_int_equal(a->n, b->n);
	for (int i = 0; i < a->n; i++) {
		assert_int_equal(a->ev[i].len, b->ev[i].len);
		assert_memory_equal(a->ev[i].data, b->ev[i].data, a->ev[i].len);
		assert_string_equal(a->ev[i].name, b->ev[i].name);
		assert_int_equal(a->ev[i].is_error, b->ev[i].is_error);
	}
}

static void test_single_event(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "data: {\"a\":1}\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.ev[0].data, "{\"a\":1}");
	assert_int_equal(r.ev[0].len, 7);
	assert_string_equal(r.ev[0].name, "");
	assert_false(r.ev[0].is_error);
	rec_free(&r);
}

static void test_no_event_without_blank_line(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "data: pending\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 0);
	rec_free(&r);
}

static void test_multiple_events(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "data: one\n\ndata: two\n\ndata: [DONE]\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 3);
	assert_string_equal(r.ev[0].data, "one");
	assert_string_equal(r.ev[1].data, "two");
	assert_string_equal(r.ev[2].data, "[DONE]");
	rec_free(&r);
}

static void test_multiline_data_joined(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "data: a\ndata: b\ndata:\ndata: c\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.ev[0].data, "a\nb\n\nc");
	rec_free(&r);
}

static void test_data_without_space(void **state)
{
	(void)state;
	struct rec r = {0};
	/* only one leading space is removed */
	const char *s = "data:x\n\ndata:  y\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.ev[0].data, "x");
	assert_string_equal(r.ev[1].data, " y");
	rec_free(&r);
}

static void test_comments_ignored(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = ":keepalive\n\n: another\ndata: x\n:mid\n\n:\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.ev[0].data, "x");
	rec_free(&r);
}

static void test_event_name(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "event: ping\ndata: p\n\ndata: q\n\nid: 7\nretry: 10\nfoo: bar\ndata: r\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 3);
	assert_string_equal(r.ev[0].name, "ping");
	assert_string_equal(r.ev[0].data, "p");
	assert_string_equal(r.ev[1].name, ""); /* name does not leak into the next event */
	assert_string_equal(r.ev[2].data, "r");
	rec_free(&r);
}

static void test_llamacpp_error_field(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "error: {\"code\":400,\"message\":\"too long\",\"type\":\"invalid_request_error\"}\n\n"
			"data: [DONE]\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 2);
	assert_true(r.ev[0].is_error);
	assert_string_equal(r.ev[0].data, "{\"code\":400,\"message\":\"too long\",\"type\":\"invalid_request_error\"}");
	assert_false(r.ev[1].is_error); /* the flag is per event */
	assert_string_equal(r.ev[1].data, "[DONE]");
	rec_free(&r);
}

static void test_line_ends(void **state)
{
	(void)state;
	const char *variants[] = {
		"data: a\n\ndata: b1\ndata: b2\n\n",
		"data: a\r\n\r\ndata: b1\r\ndata: b2\r\n\r\n",
		"data: a\r\rdata: b1\rdata: b2\r\r",
		"data: a\r\n\ndata: b1\rdata: b2\n\r\n",
	};
	for (size_t v = 0; v < sizeof variants / sizeof variants[0]; v++) {
		struct rec r = {0};
		assert_int_equal(parse_once(variants[v], strlen(variants[v]), &r, 1024), CP_OK);
		assert_int_equal(r.n, 2);
		assert_string_equal(r.ev[0].data, "a");
		assert_string_equal(r.ev[1].data, "b1\nb2");
		rec_free(&r);
	}
}

/* CR at the end of one feed and LF at the start of the next is ONE line end: "data: a\r" + "\n"
 * must not count as "data: a" + an empty line (which would dispatch early), and "data: a\r\n" +
 * "\r\n" must dispatch exactly once. */
static void test_crlf_split_across_feeds(void **state)
{
	(void)state;
	struct sse_parser p;
	struct rec r = {0};
	sse_init(&p, 1024);
	assert_int_equal(sse_feed(&p, "data: a\r", 8, on_event, &r), CP_OK);
	assert_int_equal(sse_feed(&p, "\ndata: b\r", 9, on_event, &r), CP_OK);
	assert_int_equal(r.n, 0); /* no empty line seen yet */
	assert_int_equal(sse_feed(&p, "\n\r", 2, on_event, &r), CP_OK);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.ev[0].data, "a\nb");
	assert_int_equal(sse_feed(&p, "\n", 1, on_event, &r), CP_OK);
	assert_int_equal(r.n, 1); /* the LF belongs to the CR: no extra event */
	assert_int_equal(sse_feed(&p, "data: c\r\n\r\n", 11, on_event, &r), CP_OK);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.ev[1].data, "c");
	sse_free(&p);
	rec_free(&r);
}

static const char stream_text[] =
	": keepalive\r\n"
	"\r\n"
	"event: completion\n"
	"data: {\"choices\":[{\"text\":\"h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80\",\"index\":0}]}\n"
	"\n"
	"data:line1\r"
	"data: line2\r"
	"\r"
	"error: {\"code\":500}\r\n"
	"\r\n"
	"data: {\"x\":\"\\r\\n\"}\n"
	"id: 3\n"
	"\n"
	":c\n"
	"data: [DONE]\r\n"
	"\r\n";

static void test_every_split_point(void **state)
{
	(void)state;
	size_t len = sizeof stream_text - 1;
	struct rec ref = {0};
	assert_int_equal(parse_once(stream_text, len, &ref, 4096), CP_OK);
	assert_int_equal(ref.n, 5);
	assert_string_equal(ref.ev[0].name, "completion");
	assert_string_equal(ref.ev[1].data, "line1\nline2");
	assert_true(ref.ev[2].is_error);
	assert_string_equal(ref.ev[3].data, "{\"x\":\"\\r\\n\"}");
	assert_string_equal(ref.ev[4].data, "[DONE]");

	for (size_t i = 0; i <= len; i++) {
		struct sse_parser p;
		struct rec r = {0};
		sse_init(&p, 4096);
		assert_int_equal(sse_feed(&p, stream_text, i, on_event, &r), CP_OK);
		assert_int_equal(sse_feed(&p, stream_text + i, len - i, on_event, &r), CP_OK);
		assert_same(&ref, &r);
		sse_free(&p);
		rec_free(&r);
	}
	/* and every pair of split points (three feeds) */
	for (size_t i = 0; i <= len; i++) {
		for (size_t j = i; j <= len; j++) {
			struct sse_parser p;
			struct rec r = {0};
			sse_init(&p, 4096);
			assert_int_equal(sse_feed(&p, stream_text, i, on_event, &r), CP_OK);
			assert_int_equal(sse_feed(&p, stream_text + i, j - i, on_event, &r), CP_OK);
			assert_int_equal(sse_feed(&p, stream_text + j, len - j, on_event, &r), CP_OK);
			assert_same(&ref, &r);
			sse_free(&p);
			rec_free(&r);
		}
	}
	rec_free(&ref);
}

static void test_byte_at_a_time(void **state)
{
	(void)state;
	size_t len = sizeof stream_text - 1;
	struct rec ref = {0};
	assert_int_equal(parse_once(stream_text, len, &ref, 4096), CP_OK);
	struct sse_parser p;
	struct rec r = {0};
	sse_init(&p, 4096);
	for (size_t i = 0; i < len; i++)
		assert_int_equal(sse_feed(&p, stream_text + i, 1, on_event, &r), CP_OK);
	assert_same(&ref, &r);
	sse_free(&p);
	rec_free(&r);
	rec_free(&ref);
}

static void test_utf8_split_reassembled(void **state)
{
	(void)state;
	/* U+1F600 (4 bytes) split after its first and third byte */
	const char *a = "data: x\xf0";
	const char *b = "\x9f\x98";
	const char *c = "\x80y\n\n";
	struct sse_parser p;
	struct rec r = {0};
	sse_init(&p, 1024);
	assert_int_equal(sse_feed(&p, a, strlen(a), on_event, &r), CP_OK);
	assert_int_equal(sse_feed(&p, b, strlen(b), on_event, &r), CP_OK);
	assert_int_equal(sse_feed(&p, c, strlen(c), on_event, &r), CP_OK);
	assert_int_equal(r.n, 1);
	assert_int_equal(r.ev[0].len, 6);
	assert_memory_equal(r.ev[0].data, "x\xf0\x9f\x98\x80y", 6);
	sse_free(&p);
	rec_free(&r);
}

static void test_event_too_large(void **state)
{
	(void)state;
	/* many small data lines: the pending event outgrows the cap */
	struct sse_parser p;
	struct rec r = {0};
	sse_init(&p, 32);
	int rc = CP_OK;
	for (int i = 0; i < 20 && rc == CP_OK; i++)
		rc = sse_feed(&p, "data: 0123456789\n", 17, on_event, &r);
	assert_int_equal(rc, CP_ERROR);
	assert_int_equal(r.n, 0);
	sse_free(&p);
}

static void test_line_too_large(void **state)
{
	(void)state;
	/* one endless line without a line end, fed in pieces: must stop growing */
	struct sse_parser p;
	struct rec r = {0};
	sse_init(&p, 100);
	char chunk[40];
	memset(chunk, 'a', sizeof chunk);
	memcpy(chunk, "data: ", 6);
	int rc = sse_feed(&p, chunk, sizeof chunk, on_event, &r);
	assert_int_equal(rc, CP_OK);
	memset(chunk, 'b', sizeof chunk);
	for (int i = 0; i < 10 && rc == CP_OK; i++)
		rc = sse_feed(&p, chunk, sizeof chunk, on_event, &r);
	assert_int_equal(rc, CP_ERROR);
	assert_true(p.line.len <= 100 + sizeof chunk);
	assert_int_equal(r.n, 0);
	sse_free(&p);

	/* and in one feed */
	char big[300];
	memset(big, 'c', sizeof big);
	memcpy(big, "data: ", 6);
	big[sizeof big - 2] = '\n';
	big[sizeof big - 1] = '\n';
	assert_int_equal(parse_once(big, sizeof big, &r, 100), CP_ERROR);
	assert_int_equal(r.n, 0);
}

static void test_event_at_cap_ok(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "data: 0123456789\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 16), CP_OK);
	assert_int_equal(r.n, 1);
	assert_string_equal(r.ev[0].data, "0123456789");
	rec_free(&r);
}

static void test_callback_stops(void **state)
{
	(void)state;
	struct rec r = {0};
	r.stop_after = 2;
	r.stop_rc = CP_DECLINED;
	const char *s = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_DECLINED);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.ev[1].data, "2");
	rec_free(&r);

	r.stop_after = 1;
	r.stop_rc = CP_ERROR;
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_ERROR);
	assert_int_equal(r.n, 1);
	rec_free(&r);
}

/* --- sse_borrow: events in place --------------------------------------------------------------- */

/* Records an event that may point into the input (not NUL-terminated); also notes where it was. */
static const char *last_data;
static int on_borrowed(void *arg, const struct sse_event *e)
{
	assert_non_null(e->data);
	last_data = e->data;
	return record(arg, e);
}

/* Feeds s in up to three pieces (cut at i and j) to a parser, borrowing or not. */
static int parse_cut(const char *s, size_t len, size_t i, size_t j, struct rec *r, size_t max, bool borrow)
{
	struct sse_parser p;
	sse_event_cb cb = borrow ? on_borrowed : on_event;
	sse_init(&p, max);
	sse_borrow(&p, borrow);
	int rc = sse_feed(&p, s, i, cb, r);
	if (rc == CP_OK)
		rc = sse_feed(&p, s + i, j - i, cb, r);
	if (rc == CP_OK)
		rc = sse_feed(&p, s + j, len - j, cb, r);
	sse_free(&p);
	return rc;
}

/* A borrowing parser gives the events (and the outcome) a copying one gives, however the input is
 * cut (whole, the in-place path runs most; cut before an event's empty line, never). */
static void test_borrow_same_events(void **state)
{
	(void)state;
	static const struct {
		const char *s;
		size_t max;
	} cases[] = {
		{stream_text, 4096},
		{"data: {\"a\":1}\n\ndata: b\r\n\r\ndata:c\n\ndata:  d\n\ndata:\n\ndata: \n\n", 4096},
		{"event: e\ndata: x\n\nerror: {\"code\":500}\n\nerror:\r\n\r\ndata\n\ndatax: y\n\n", 4096},
		{"data: a\r\n\ndata: b\n\r\ndata: c\r\rdata: d\r\n\r\r", 4096},
		{"data: a\ndata: b\n\n:x\n\nid: 1\n\ndata: c\n\n\n\ndata: [DONE]\n\n", 4096},
		{"data: 0123456789\n\ndata: 01234567890\n\n", 10}, /* at the cap, then one past it */
		{"error: 0123456789a\r\n\r\n", 10},
		{"data: x\n\ndata: y\n", 4096}, /* the last event without its empty line */
	};
	for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
		const char *s = cases[c].s;
		size_t len = strlen(s);
		for (size_t i = 0; i <= len; i++) {
			for (size_t j = i; j <= len; j++) {
				struct rec ref = {0}, r = {0};
				int want = parse_cut(s, len, i, j, &ref, cases[c].max, false);
				int rc = parse_cut(s, len, i, j, &r, cases[c].max, true);
				if (rc != want || r.n != ref.n)
					fail_msg("case %zu cut %zu/%zu: rc %d, want %d; %d events, want %d", c, i, j, rc, want,
						 r.n, ref.n);
				assert_same(&ref, &r);
				rec_free(&ref);
				rec_free(&r);
			}
		}
	}
}

/* An event that is one data: line, whole in a feed, is handed in place, not copied. */
static void test_borrow_in_place(void **state)
{
	(void)state;
	static const char s[] = "data: {\"a\":1}\n\nevent: n\nerror: e\r\n\r\n";
	struct rec r = {0};
	struct sse_parser p;
	sse_init(&p, 1024);
	sse_borrow(&p, true);
	assert_int_equal(sse_feed(&p, s, 15, on_borrowed, &r), CP_OK);
	assert_int_equal(r.n, 1);
	assert_ptr_equal(last_data, s + 6);
	assert_int_equal(sse_feed(&p, s + 15, sizeof s - 1 - 15, on_borrowed, &r), CP_OK);
	assert_int_equal(r.n, 2);
	assert_ptr_equal(last_data, s + 15 + 16);
	assert_string_equal(r.ev[1].name, "n");
	assert_true(r.ev[1].is_error);
	assert_string_equal(r.ev[1].data, "e");
	sse_free(&p);
	rec_free(&r);
	/* the callback's stop passes through the in-place path too */
	r.stop_after = 1;
	r.stop_rc = CP_DECLINED;
	assert_int_equal(parse_cut("data: 1\n\ndata: 2\n\n", 18, 18, 18, &r, 1024, true), CP_DECLINED);
	assert_int_equal(r.n, 1);
	rec_free(&r);
}

static void test_blank_lines_only(void **state)
{
	(void)state;
	struct rec r = {0};
	const char *s = "\n\n\r\n\r\r\nevent: x\n\n";
	assert_int_equal(parse_once(s, strlen(s), &r, 1024), CP_OK);
	assert_int_equal(r.n, 0); /* no data: no event */
	rec_free(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_single_event),
		cmocka_unit_test(test_no_event_without_blank_line),
		cmocka_unit_test(test_multiple_events),
		cmocka_unit_test(test_multiline_data_joined),
		cmocka_unit_test(test_data_without_space),
		cmocka_unit_test(test_comments_ignored),
		cmocka_unit_test(test_event_name),
		cmocka_unit_test(test_llamacpp_error_field),
		cmocka_unit_test(test_line_ends),
		cmocka_unit_test(test_crlf_split_across_feeds),
		cmocka_unit_test(test_every_split_point),
		cmocka_unit_test(test_byte_at_a_time),
		cmocka_unit_test(test_utf8_split_reassembled),
		cmocka_unit_test(test_event_too_large),
		cmocka_unit_test(test_line_too_large),
		cmocka_unit_test(test_event_at_cap_ok),
		cmocka_unit_test(test_callback_stops),
		cmocka_unit_test(test_blank_lines_only),
		cmocka_unit_test(test_borrow_same_events),
		cmocka_unit_test(test_borrow_in_place),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
