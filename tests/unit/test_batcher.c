/* Unit tests for the batcher (batcher.c, call.c, batch.c): fan-out of one batched stream to its
 * members, the dispatch policy, and the retry and bisection rules.
 *
 * The batcher runs on a real event loop with a real upstream pool; only the wire is fake: this
 * binary is linked with -Wl,--wrap=upstream_call,--wrap=upcall_cancel (Makefile), so a call is
 * recorded here and the test plays the upstream by calling its upcall_ops. Each client is a
 * recording sink. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include <cmocka.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "carpool/batcher.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

/* --- the fake wire --------------------------------------------------------------------------- */

#define MAX_CALLS 16

struct fake_call {
	struct upstream *up;
	char path[64];
	char *body;
	const struct upcall_ops *ops;
	void *arg;
	bool cancelled;
};

static struct fake_call calls[MAX_CALLS];
static int ncalls;

struct upcall *__wrap_upstream_call(struct upstream *up, const char *method, const char *path,
				    const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
				    size_t len, const struct upcall_ops *ops, void *arg);
void __wrap_upcall_cancel(struct upcall *c);

struct upcall *__wrap_upstream_call(struct upstream *up, const char *method, const char *path,
				    const char *const *hdrs, size_t nhdrs, const char *client_auth, const char *body,
				    size_t len, const struct upcall_ops *ops, void *arg)
{
	(void)hdrs;
	(void)nhdrs;
	(void)client_auth;
	assert_string_equal(method, "POST");
	assert_true(ncalls < MAX_CALLS);
	struct fake_call *c = &calls[ncalls++];
	c->up = up;
	snprintf(c->path, sizeof c->path, "%s", path);
	c->body = xstrndup(body, len);
	c->ops = ops;
	c->arg = arg;
	return (struct upcall *)c;
}

void __wrap_upcall_cancel(struct upcall *c) { ((struct fake_call *)c)->cancelled = true; }

/* The upstream answers call i: its head, body bytes, the end. */
static void up_head(int i, int status, const char *ctype)
{
	struct evkeyvalq h;
	TAILQ_INIT(&h);
	evhttp_add_header(&h, "Content-Type", ctype);
	calls[i].ops->on_head(calls[i].arg, status, &h);
	evhttp_clear_headers(&h);
}

static void up_data(int i, const char *s) { calls[i].ops->on_data(calls[i].arg, s, strlen(s)); }

static void up_done(int i, enum upcall_error err) { calls[i].ops->on_done(calls[i].arg, err); }

/* The upstream answers call i whole. */
static void up_answer(int i, int status, const char *ctype, const char *body)
{
	up_head(i, status, ctype);
	up_data(i, body);
	up_done(i, UPE_NONE);
}

/* The prompts of call i, as JSON text ("[\"a\",\"b\"]"). */
static char *call_prompts(int i)
{
	cJSON *j = cJSON_Parse(calls[i].body);
	assert_non_null(j);
	char *s = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(j, "prompt"));
	cJSON_Delete(j);
	return s;
}

static void assert_prompts(int i, const char *want)
{
	char *s = call_prompts(i);
	assert_string_equal(s, want);
	free(s);
}

/* --- the recording sink ---------------------------------------------------------------------- */

struct rsink {
	struct sink s;
	int status; /* 0: nothing yet */
	bool streamed, ended, replied, aborted;
	char extra[512];
	struct sbuf out;
};

static struct rsink *rs(struct sink *s) { return (struct rsink *)((char *)s - offsetof(struct rsink, s)); }

static void rs_start(struct sink *s, int status, const char *ctype, const char *extra)
{
	(void)ctype;
	struct rsink *r = rs(s);
	assert_false(r->streamed || r->replied);
	r->status = status;
	r->streamed = true;
	snprintf(r->extra, sizeof r->extra, "%s", extra ? extra : "");
}

static void rs_write(struct sink *s, const char *data, size_t len)
{
	struct rsink *r = rs(s);
	assert_true(r->streamed && !r->ended);
	sbuf_add(&r->out, data, len);
}

static void rs_end(struct sink *s)
{
	struct rsink *r = rs(s);
	assert_true(r->streamed && !r->ended);
	r->ended = true;
}

static void rs_reply(struct sink *s, int status, const char *ctype, const char *extra, const char *body, size_t len)
{
	(void)ctype;
	struct rsink *r = rs(s);
	assert_false(r->streamed || r->replied);
	r->status = status;
	r->replied = true;
	snprintf(r->extra, sizeof r->extra, "%s", extra ? extra : "");
	sbuf_add(&r->out, body, len);
}

static void rs_abort(struct sink *s) { rs(s)->aborted = true; }

static const struct sink_ops rs_ops = {rs_start, rs_write, rs_end, rs_reply, rs_abort};

/* The client's whole answer so far, NUL-terminated. */
static const char *text(struct rsink *r) { return r->out.data ? r->out.data : ""; }

/* --- the fixture ----------------------------------------------------------------------------- */

#define MAX_CLIENTS 8

struct fx {
	struct config cfg;
	struct event_base *base;
	struct upstream ups[1];
	struct batcher *bt;
	struct rsink clients[MAX_CLIENTS];
};

static struct fx *fx_new(const char *batching)
{
	struct fx *f = xcalloc(1, sizeof *f);
	char yaml[1024], err[512];
	snprintf(yaml, sizeof yaml,
		 "listen:\n  - address: 127.0.0.1:0\n"
		 "upstreams:\n  - url: http://127.0.0.1:9\n    dialect: vllm\n%s"
		 "timeouts:\n  sse_keepalive_ms: 0\n",
		 batching);
	if (config_load_string("test.yaml", yaml, strlen(yaml), &f->cfg, err, sizeof err) != CP_OK)
		fail_msg("config: %s", err);
	f->base = event_base_new();
	assert_int_equal(upstream_init(&f->ups[0], 0, f->base, NULL, &f->cfg, &f->cfg.upstreams[0], NULL), CP_OK);
	f->bt = batcher_new(f->base, &f->cfg, f->ups, 1);
	for (int i = 0; i < MAX_CLIENTS; i++)
		f->clients[i].s.ops = &rs_ops;
	for (int i = 0; i < MAX_CALLS; i++) {
		free(calls[i].body);
		memset(&calls[i], 0, sizeof calls[i]);
	}
	ncalls = 0;
	return f;
}

static void fx_free(struct fx *f)
{
	batcher_free(f->bt);
	upstream_free(&f->ups[0]);
	event_base_free(f->base);
	for (int i = 0; i < MAX_CLIENTS; i++)
		sbuf_free(&f->clients[i].out);
	free(f);
}

/* Client i asks for a completion (body: the JSON request). */
static void submit(struct fx *f, int i, const char *body)
{
	struct intake_req req;
	struct intake_error e;
	if (intake_parse_completion(body, strlen(body), &req, &e) != CP_OK)
		fail_msg("intake: %s", e.message);
	batcher_submit(f->bt, &f->clients[i].s, &req, 1u, NULL);
}

/* Client i asks for embeddings. */
static void submit_embed(struct fx *f, int i, const char *body)
{
	struct intake_req req;
	struct intake_error e;
	if (intake_parse_embedding(body, strlen(body), &req, &e) != CP_OK)
		fail_msg("intake: %s", e.message);
	batcher_submit_embed(f->bt, &f->clients[i].s, &req, 1u, NULL);
}

/* Runs the loop for ms (timers: the window, a retry's wait, room offered). */
static void run_ms(struct fx *f, long ms)
{
	struct timeval tv = tv_of_ms(ms);
	event_base_loopexit(f->base, &tv);
	event_base_dispatch(f->base);
}

#define EV(choice, txt, fin)                                                                              \
	"data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":" \
	#choice ",\"text\":\"" txt "\",\"logprobs\":null,\"finish_reason\":" fin "}]}\n\n"

/* --- fan-out --------------------------------------------------------------------------------- */

/* One streamed upstream call, two members: each gets only its own choices, re-indexed from 0; the
 * streaming one ends the moment its choice finishes, the other gets a JSON body at the end. */
static void fan_out(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 1000\n  max_batch_size: 2\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\",\"stream\":true}");
	assert_int_equal(ncalls, 0); /* fixed: the window */
	submit(f, 1, "{\"model\":\"m\",\"prompt\":\"b\"}");
	assert_int_equal(ncalls, 1); /* full: it goes at once */
	assert_string_equal(calls[0].path, "/v1/completions");
	assert_prompts(0, "[\"a\",\"b\"]");
	assert_non_null(strstr(calls[0].body, "\"stream\":true"));
	struct rsink *a = &f->clients[0], *b = &f->clients[1];

	up_head(0, 200, "text/event-stream");
	assert_true(a->streamed);
	assert_int_equal(a->status, 200);
	assert_non_null(strstr(a->extra, "X-Carpool-Batch: "));
	assert_false(b->replied);
	up_data(0, EV(1, "B1", "null") EV(0, "A1", "null"));
	assert_non_null(strstr(text(a), "\"text\":\"A1\""));
	assert_null(strstr(text(a), "B1"));
	up_data(0, EV(0, "A2", "\"stop\""));
	assert_true(a->ended); /* contract 4: done without waiting for b */
	assert_non_null(strstr(text(a), "data: [DONE]"));
	assert_null(strstr(text(a), "\"index\":1"));
	assert_false(b->replied);
	up_data(0, EV(1, "B2", "\"length\"") "data: [DONE]\n\n");
	up_done(0, UPE_NONE);
	assert_true(b->replied);
	assert_int_equal(b->status, 200);
	cJSON *j = cJSON_Parse(text(b));
	assert_non_null(j);
	cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(ch, "text")->valuestring, "B1B2");
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(ch, "index")->valueint, 0);
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(ch, "finish_reason")->valuestring, "length");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "choices")), 1);
	cJSON_Delete(j);
	assert_null(strstr(text(b), "A1"));
	struct batcher_stats st = batcher_stats(f->bt);
	assert_int_equal(st.calls, 1);
	assert_int_equal(st.call_prompts, 2);
	assert_int_equal(st.active, 0);
	fx_free(f);
}

/* A member with two prompts and n=2 takes slots 1-2 after a one-prompt member: upstream choice
 * p*n+j comes back as (p-1)*n+j (contract 3). */
static void fan_out_index_mapping(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 1000\n  max_batch_size: 3\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\",\"n\":2,\"stream\":true}");
	submit(f, 1, "{\"model\":\"m\",\"prompt\":[\"b\",\"c\"],\"n\":2,\"stream\":true}");
	assert_int_equal(ncalls, 1);
	up_head(0, 200, "text/event-stream");
	up_data(0, EV(5, "c1", "\"stop\"") EV(2, "b0", "\"stop\"") EV(1, "a1", "\"stop\""));
	struct rsink *b = &f->clients[1];
	const char *c1 = strstr(text(b), "\"text\":\"c1\""), *b0 = strstr(text(b), "\"text\":\"b0\"");
	assert_non_null(c1);
	assert_non_null(b0);
	assert_true(c1 < b0); /* upstream order kept */
	assert_non_null(strstr(text(b), "\"index\":3,\"text\":\"c1\""));
	assert_non_null(strstr(text(b), "\"index\":0,\"text\":\"b0\""));
	assert_null(strstr(text(b), "a1"));
	assert_non_null(strstr(text(&f->clients[0]), "\"index\":1,\"text\":\"a1\""));
	up_data(0, EV(0, "a0", "\"stop\"") EV(3, "b1", "\"stop\"") EV(4, "c0", "\"stop\"") "data: [DONE]\n\n");
	assert_true(f->clients[0].ended);
	assert_true(b->ended);
	/* (the first event takes the full parse, the later ones the splitter's fast path: both map) */
	assert_non_null(strstr(text(b), "\"index\":1,\"text\":\"b1\""));
	assert_non_null(strstr(text(b), "\"index\":2,\"text\":\"c0\""));
	assert_non_null(strstr(text(&f->clients[0]), "\"index\":0,\"text\":\"a0\""));
	up_done(0, UPE_NONE);
	fx_free(f);
}

/* --- the dispatch policy --------------------------------------------------------------------- */

/* fixed: a batch waits for the window even at light load; adaptive: a lone request goes at once. */
static void dispatch_fixed_vs_adaptive(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 30\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\"}");
	assert_int_equal(ncalls, 0);
	uint64_t t0 = now_us();
	while (ncalls == 0 && now_us() - t0 < 2000000)
		run_ms(f, 5);
	assert_int_equal(ncalls, 1);
	assert_true(now_us() - t0 >= 15000); /* it waited for the window (the loop may round it down) */
	fx_free(f);

	f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 30\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\"}");
	assert_int_equal(ncalls, 1); /* light load: at once */
	fx_free(f);
}

/* adaptive: requests arriving back to back go at once until the average gap falls under the
 * window; then a batch waits for the window and gathers the next ones. */
static void dispatch_adaptive_under_load(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 200\n");
	for (int i = 0; i < 5; i++)
		submit(f, i, "{\"model\":\"m\",\"prompt\":\"p\"}");
	/* gaps: the first counts 2 windows; then 1.5, 1.125, 0.84 windows (EWMA 3/4): three at once */
	assert_int_equal(ncalls, 3);
	run_ms(f, 300);
	assert_int_equal(ncalls, 4);
	assert_prompts(3, "[\"p\",\"p\"]"); /* the 4th and 5th shared the window */
	fx_free(f);
}

/* adaptive, no room (max_sequences: 1): later requests wait in the queue, and go the moment the
 * sequence in flight ends - not when its call ends - packed into the room that freed (one of the
 * two queued goes, the other waits for the next sequence to end). */
static void dispatch_waits_for_room(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 10\n");
	f->cfg.upstreams[0].max_sequences = 1;
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\",\"stream\":true}");
	assert_int_equal(ncalls, 1);
	submit(f, 1, "{\"model\":\"m\",\"prompt\":\"b\",\"stream\":true}");
	submit(f, 2, "{\"model\":\"m\",\"prompt\":\"c\",\"stream\":true}");
	run_ms(f, 50);
	assert_int_equal(ncalls, 1); /* queued, not sent */
	up_head(0, 200, "text/event-stream");
	up_data(0, EV(0, "a", "\"stop\""));
	run_ms(f, 20); /* the freed sequence is offered from the loop; call 0 is still open */
	assert_int_equal(ncalls, 2);
	assert_prompts(1, "[\"b\"]");
	up_head(1, 200, "text/event-stream");
	up_data(1, EV(0, "b", "\"stop\""));
	run_ms(f, 20);
	assert_int_equal(ncalls, 3);
	assert_prompts(2, "[\"c\"]");
	up_head(2, 200, "text/event-stream");
	up_data(2, EV(0, "c", "\"stop\""));
	for (int i = 0; i < 3; i++) {
		up_data(i, "data: [DONE]\n\n");
		up_done(i, UPE_NONE);
		assert_true(f->clients[i].ended);
	}
	fx_free(f);
}

/* --- retries and bisection ------------------------------------------------------------------- */

/* A 400 for a batch of two: the halves go apart, so that only the member at fault gets the error
 * (contract 6); the upstream's error JSON reaches it as it came. */
static void bisect_on_4xx(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 1000\n  max_batch_size: 2\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"good\"}");
	submit(f, 1, "{\"model\":\"m\",\"prompt\":\"bad\"}");
	assert_int_equal(ncalls, 1);
	const char *errj = "{\"error\":{\"message\":\"bad prompt\",\"type\":\"invalid_request_error\"}}";
	up_answer(0, 400, "application/json", errj);
	assert_int_equal(ncalls, 3); /* the two halves, at once (room) */
	assert_false(f->clients[0].replied);
	assert_false(f->clients[1].replied);
	int good = strstr(calls[1].body, "\"good\"") ? 1 : 2, bad = 3 - good;
	assert_prompts(good, "[\"good\"]");
	assert_prompts(bad, "[\"bad\"]");
	/* alone: no more bisection, the error goes to its client */
	up_answer(bad, 400, "application/json", errj);
	assert_int_equal(ncalls, 3);
	assert_true(f->clients[1].replied);
	assert_int_equal(f->clients[1].status, 400);
	assert_string_equal(text(&f->clients[1]), errj);
	up_answer(good, 200, "text/event-stream", EV(0, "fine", "\"stop\"") "data: [DONE]\n\n");
	assert_int_equal(f->clients[0].status, 200);
	assert_non_null(strstr(text(&f->clients[0]), "fine"));
	assert_int_equal(batcher_stats(f->bt).bisections, 1);
	fx_free(f);
}

/* A 5xx before any byte reached a client: the batch is sent again after a short wait (contract 11),
 * and the clients see only the good answer. */
static void retry_on_5xx(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 10\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\"}");
	assert_int_equal(ncalls, 1);
	up_answer(0, 500, "application/json", "{\"error\":{\"message\":\"oops\"}}");
	assert_int_equal(ncalls, 1);
	assert_false(f->clients[0].replied);
	run_ms(f, 300); /* the retry's wait: 100 ms */
	assert_int_equal(ncalls, 2);
	assert_prompts(1, "[\"a\"]");
	up_answer(1, 200, "text/event-stream", EV(0, "ok", "\"stop\"") "data: [DONE]\n\n");
	assert_int_equal(f->clients[0].status, 200);
	assert_non_null(strstr(text(&f->clients[0]), "\"ok\""));
	assert_int_equal(batcher_stats(f->bt).retries, 1);
	fx_free(f);
}

/* What is not retried: a 501 (the upstream cannot do it), and a 5xx after the last attempt. */
static void no_retry(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 10\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\"}");
	up_answer(0, 501, "application/json", "{\"error\":{\"message\":\"no\"}}");
	assert_true(f->clients[0].replied);
	assert_int_equal(f->clients[0].status, 501);
	run_ms(f, 150);
	assert_int_equal(ncalls, 1);

	submit(f, 1, "{\"model\":\"m\",\"prompt\":\"b\"}");
	for (int attempt = 0; attempt < 3; attempt++) {
		int i = ncalls - 1;
		up_answer(i, 503, "text/html", "<html>busy</html>");
		run_ms(f, 1200); /* a 503 without Retry-After backs the upstream off for 1 s */
	}
	assert_int_equal(ncalls, 4); /* the first and two retries */
	assert_true(f->clients[1].replied);
	assert_int_equal(f->clients[1].status, 502); /* not an error JSON: carpool's own */
	assert_non_null(strstr(text(&f->clients[1]), "answered 503"));
	fx_free(f);
}

/* The upstream breaks mid-stream: a stream that got bytes ends with an error event; a member to
 * whom nothing was written yet moves to a new call and gets its whole answer. */
static void requeue_on_break(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 1000\n  max_batch_size: 2\n");
	submit(f, 0, "{\"model\":\"m\",\"prompt\":\"a\",\"stream\":true}");
	submit(f, 1, "{\"model\":\"m\",\"prompt\":\"b\"}");
	assert_int_equal(ncalls, 1);
	up_head(0, 200, "text/event-stream");
	up_data(0, EV(0, "A1", "null") EV(1, "B1", "null"));
	up_done(0, UPE_BROKEN);
	struct rsink *a = &f->clients[0], *b = &f->clients[1];
	assert_true(a->ended);
	assert_non_null(strstr(text(a), "A1"));
	assert_non_null(strstr(text(a), "\"error\""));
	assert_false(b->replied);
	assert_int_equal(ncalls, 2); /* at once: the upstream has room */
	assert_prompts(1, "[\"b\"]");
	up_answer(1, 200, "text/event-stream", EV(0, "B", "\"stop\"") "data: [DONE]\n\n");
	assert_int_equal(b->status, 200);
	assert_non_null(strstr(text(b), "\"text\":\"B\""));
	assert_null(strstr(text(b), "B1")); /* nothing of the broken call */
	fx_free(f);
}

/* --- embeddings ------------------------------------------------------------------------------ */

static void assert_embedding(struct rsink *r, int i, double want)
{
	cJSON *j = cJSON_Parse(text(r));
	assert_non_null(j);
	cJSON *it = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "data"), i);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(it, "index")->valueint, i);
	assert_true(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(it, "embedding"), 0)->valuedouble == want);
	cJSON_Delete(j);
}

/* Two clients' inputs in one call; the answer, out of order, goes back to each in its own order
 * with its share of the usage. */
static void embeddings_shared_call(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: fixed\n  max_wait_ms: 1000\n  max_batch_size: 3\n");
	submit_embed(f, 0, "{\"model\":\"m\",\"input\":[\"aaaa\",\"bbbb\"]}");
	submit_embed(f, 1, "{\"model\":\"m\",\"input\":\"cccc\"}");
	assert_int_equal(ncalls, 1);
	assert_string_equal(calls[0].path, "/v1/embeddings");
	up_answer(0, 200, "application/json",
		  "{\"object\":\"list\",\"model\":\"m\",\"data\":[{\"index\":2,\"embedding\":[3]},"
		  "{\"index\":1,\"embedding\":[2]},{\"index\":0,\"embedding\":[1]}],"
		  "\"usage\":{\"prompt_tokens\":6,\"total_tokens\":6}}");
	struct rsink *a = &f->clients[0], *b = &f->clients[1];
	assert_int_equal(a->status, 200);
	assert_int_equal(b->status, 200);
	assert_embedding(a, 0, 1);
	assert_embedding(a, 1, 2);
	assert_embedding(b, 0, 3);
	assert_non_null(strstr(text(a), "\"prompt_tokens\":4"));
	assert_non_null(strstr(text(b), "\"prompt_tokens\":2"));
	assert_non_null(strstr(a->extra, "X-Carpool-Usage: estimated"));
	fx_free(f);
}

/* A request in two parts (max_inputs_per_call: 2): the first part's call is refused, so the client
 * gets that error once, and the second part's answer is dropped. */
static void embeddings_failed_part(void **state)
{
	(void)state;
	struct fx *f = fx_new("batching:\n  policy: adaptive\n  max_wait_ms: 10\n");
	f->ups[0].max_inputs = 2;
	submit_embed(f, 0, "{\"model\":\"m\",\"input\":[\"a\",\"b\",\"c\"]}");
	run_ms(f, 30);
	assert_int_equal(ncalls, 2);
	const char *errj = "{\"error\":{\"message\":\"too long\",\"type\":\"invalid_request_error\"}}";
	up_answer(0, 400, "application/json", errj);
	struct rsink *r = &f->clients[0];
	assert_true(r->replied);
	assert_int_equal(r->status, 400);
	assert_string_equal(text(r), errj);
	if (!calls[1].cancelled) /* its client is answered: the other part may still be in flight */
		up_answer(1, 200, "application/json", "{\"data\":[{\"index\":0,\"embedding\":[3]}],\"usage\":{}}");
	assert_string_equal(text(r), errj); /* one reply, the error */
	fx_free(f);
}

int main(void)
{
	log_set_level(LOG_CRIT);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(fan_out),
		cmocka_unit_test(fan_out_index_mapping),
		cmocka_unit_test(dispatch_fixed_vs_adaptive),
		cmocka_unit_test(dispatch_adaptive_under_load),
		cmocka_unit_test(dispatch_waits_for_room),
		cmocka_unit_test(bisect_on_4xx),
		cmocka_unit_test(retry_on_5xx),
		cmocka_unit_test(no_retry),
		cmocka_unit_test(requeue_on_break),
		cmocka_unit_test(embeddings_shared_call),
		cmocka_unit_test(embeddings_failed_part),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
