/* Unit tests for src/splitter.c: one batched upstream stream -> each member's own stream or body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/splitter.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

#define MAXM 4

/* The SSE events of a member's output: each "data: X\n\n" (or "error: X\n\n") block's payload. */
struct sse_out {
	char *data[64];
	bool is_error[64];
	int n;
};


struct fixture {
	struct split sp;
	struct split_member *m[MAXM];
	unsigned est[MAXM][4];
	unsigned nm;
	cJSON *parsed[64]; /* every js() result, freed at teardown (also when an assertion fails) */
	unsigned nparsed;
	struct sse_out outs[8];
	unsigned nouts;
};

static struct fixture fx;

static int setup(void **state)
{
	(void)state;
	memset(&fx, 0, sizeof fx);
	return 0;
}

static void out_free(struct sse_out *o);

static int teardown(void **state)
{
	(void)state;
	for (unsigned i = 0; i < fx.nparsed; i++)
		cJSON_Delete(fx.parsed[i]);
	for (unsigned i = 0; i < fx.nouts; i++)
		out_free(&fx.outs[i]);
	split_free(&fx.sp);
	for (unsigned i = 0; i < fx.nm; i++) {
		split_member_free(fx.m[i]);
		free(fx.m[i]);
	}
	memset(&fx, 0, sizeof fx);
	return 0;
}

static struct split_member *add(unsigned nprompts, bool stream, bool include_usage)
{
	assert_true(fx.nm < MAXM);
	struct split_member *m = calloc(1, sizeof *m);
	assert_non_null(m);
	m->nprompts = nprompts;
	m->stream = stream;
	m->include_usage = include_usage;
	m->prompt_tokens_est = fx.est[fx.nm];
	fx.m[fx.nm++] = m;
	return m;
}

static void start(enum dialect d, unsigned n)
{
	split_init(&fx.sp, d, n, fx.m, fx.nm);
}

static int ev(const char *json)
{
	return split_event(&fx.sp, json, strlen(json), false);
}

/* vLLM / OpenAI completion chunk: one choice. usage NULL: no usage field. */
static char *vchunk(unsigned idx, const char *text, const char *finish, const char *usage)
{
	static char buf[1024];
	char fin[32];
	snprintf(fin, sizeof fin, finish ? "\"%s\"" : "null", finish);
	char us[256] = "";
	if (usage)
		snprintf(us, sizeof us, ",\"usage\":%s", usage);
	snprintf(buf, sizeof buf,
		 "{\"id\":\"cmpl-7f3a\",\"object\":\"text_completion\",\"created\":1700000123,\"model\":\"llama-3\","
		 "\"system_fingerprint\":\"fp_x1\",\"choices\":[{\"index\":%u,\"text\":\"%s\",\"logprobs\":null,"
		 "\"finish_reason\":%s,\"stop_reason\":null}]%s}",
		 idx, text, fin, us);
	return buf;
}

static char *vusage(long pt, long ct)
{
	static char buf[128];
	snprintf(buf, sizeof buf, "{\"prompt_tokens\":%ld,\"total_tokens\":%ld,\"completion_tokens\":%ld}", pt, pt + ct, ct);
	return buf;
}

/* The final usage-only chunk (include_usage) of the whole call. */
static char *vfinal_usage(long pt, long ct)
{
	static char buf[512];
	snprintf(buf, sizeof buf,
		 "{\"id\":\"cmpl-7f3a\",\"object\":\"text_completion\",\"created\":1700000123,\"model\":\"llama-3\","
		 "\"choices\":[],\"usage\":{\"prompt_tokens\":%ld,\"total_tokens\":%ld,\"completion_tokens\":%ld}}",
		 pt, pt + ct, ct);
	return buf;
}

/* llama.cpp b4748 chunk, field order as on the wire (03b). */
static char *lchunk(unsigned idx, const char *text)
{
	static char buf[1024];
	snprintf(buf, sizeof buf,
		 "{\"choices\":[{\"text\":\"%s\",\"index\":%u,\"logprobs\":null,\"finish_reason\":null}],"
		 "\"created\":1795783920,\"model\":\"stories260K\",\"system_fingerprint\":\"b4748-c392e5094\","
		 "\"object\":\"text_completion\",\"id\":\"chatcmpl-kLhGHp6YdQyRA1oyrZaGKFWP3nuVAB6A\"}",
		 text, idx);
	return buf;
}

/* llama.cpp's per-prompt final chunk: text "", finish_reason, its own usage and timings. */
static char *lfinal(unsigned idx, long ct, long pt, long prompt_n)
{
	static char buf[1024];
	snprintf(buf, sizeof buf,
		 "{\"choices\":[{\"text\":\"\",\"index\":%u,\"logprobs\":null,\"finish_reason\":\"length\"}],"
		 "\"created\":1795783920,\"model\":\"stories260K\",\"system_fingerprint\":\"b4748-c392e5094\","
		 "\"object\":\"text_completion\",\"usage\":{\"completion_tokens\":%ld,\"prompt_tokens\":%ld,"
		 "\"total_tokens\":%ld},\"id\":\"chatcmpl-kLhGHp6YdQyRA1oyrZaGKFWP3nuVAB6A\",\"timings\":{"
		 "\"prompt_n\":%ld,\"prompt_ms\":1.934,\"prompt_per_token_ms\":0.32,\"prompt_per_second\":3102.37,"
		 "\"predicted_n\":%ld,\"predicted_ms\":6.844,\"predicted_per_token_ms\":0.8555,"
		 "\"predicted_per_second\":1168.9}}",
		 idx, ct, pt, pt + ct, prompt_n, ct);
	return buf;
}

/* The result lives in the fixture and is freed at teardown. */
static struct sse_out *parse_out(const struct split_member *m)
{
	assert_true(fx.nouts < 8);
	struct sse_out *o = &fx.outs[fx.nouts++];
	memset(o, 0, sizeof *o);
	const char *s = m->out.data ? m->out.data : "";
	size_t len = m->out.len;
	size_t i = 0;
	while (i < len) {
		const char *end = strstr(s + i, "\n\n");
		if (!end)
			fail_msg("output not made of complete SSE events: \"%s\"", s + i);
		const char *line = s + i;
		size_t n = (size_t)(end - line);
		assert_null(memchr(line, '\n', n)); /* one line per event here */
		assert_true(o->n < 64);
		if (n >= 6 && !memcmp(line, "data: ", 6)) {
			o->data[o->n] = xstrndup(line + 6, n - 6);
		} else if (n >= 7 && !memcmp(line, "error: ", 7)) {
			o->data[o->n] = xstrndup(line + 7, n - 7);
			o->is_error[o->n] = true;
		} else {
			fail_msg("unexpected SSE line \"%.*s\"", (int)n, line);
		}
		o->n++;
		i = (size_t)(end - s) + 2;
	}
	return o;
}

static void out_free(struct sse_out *o)
{
	for (int i = 0; i < o->n; i++) {
		free(o->data[i]);
		o->data[i] = NULL;
	}
	o->n = 0;
}

static cJSON *js_tmp(const char *s)
{
	cJSON *v = cJSON_Parse(s);
	if (!v)
		fail_msg("not JSON: %s", s);
	return v;
}

/* Parses s; the result is freed at teardown. */
static cJSON *js(const char *s)
{
	cJSON *v = js_tmp(s);
	assert_true(fx.nparsed < 64);
	fx.parsed[fx.nparsed++] = v;
	return v;
}

static const char *str_field(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
	if (!cJSON_IsNumber(v))
		fail_msg("field %s is not a number", name);
	return v->valuedouble;
}

/* A chunk of a member's stream: exactly one choice; returns it. */
static const cJSON *only_choice(const cJSON *chunk)
{
	const cJSON *ch = cJSON_GetObjectItemCaseSensitive(chunk, "choices");
	assert_true(cJSON_IsArray(ch));
	assert_int_equal(cJSON_GetArraySize(ch), 1);
	return ch->child;
}

/* The text a streaming member got for client choice idx (concatenated), and finish_reason. */
static void stream_text(const struct sse_out *o, int idx, char *text, size_t cap, char *finish, size_t fcap)
{
	text[0] = 0;
	if (finish)
		finish[0] = 0;
	for (int i = 0; i < o->n; i++) {
		if (!strcmp(o->data[i], "[DONE]") || o->is_error[i])
			continue;
		cJSON *c = js_tmp(o->data[i]);
		const cJSON *choices = cJSON_GetObjectItemCaseSensitive(c, "choices");
		for (const cJSON *ch = choices ? choices->child : NULL; ch; ch = ch->next) {
			if ((int)num(ch, "index") != idx)
				continue;
			const char *t = str_field(ch, "text");
			if (t)
				strncat(text, t, cap - strlen(text) - 1);
			const char *f = str_field(ch, "finish_reason");
			if (f && finish)
				snprintf(finish, fcap, "%s", f);
		}
		cJSON_Delete(c);
	}
}

static bool ends_with_done(const struct split_member *m)
{
	const char *tail = "data: [DONE]\n\n";
	size_t n = strlen(tail);
	return m->out.len >= n && !memcmp(m->out.data + m->out.len - n, tail, n);
}

static int count_done(const struct split_member *m)
{
	int n = 0;
	for (const char *p = m->out.data; p && (p = strstr(p, "data: [DONE]")); p++)
		n++;
	return n;
}

/* ---- vLLM / OpenAI streams --------------------------------------------------------------------- */

static void test_vllm_two_members_own_choices(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(fx.sp.nslots, 2);
	assert_int_equal(a->slot0, 0);
	assert_int_equal(b->slot0, 1);

	assert_int_equal(ev(vchunk(0, "Hel", NULL, vusage(5, 1))), CP_OK);
	assert_true(a->dirty);
	assert_false(b->dirty);
	assert_int_equal(ev(vchunk(1, "Wor", NULL, vusage(7, 1))), CP_OK);
	assert_true(b->dirty);
	assert_int_equal(ev(vchunk(1, "ld", NULL, vusage(7, 2))), CP_OK);
	assert_int_equal(ev(vchunk(0, "lo", "stop", vusage(5, 2))), CP_OK);
	assert_int_equal(ev(vchunk(1, "!", "length", vusage(7, 3))), CP_OK);
	assert_int_equal(ev(vfinal_usage(12, 5)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);

	struct sse_out *oa, *ob;
	oa = parse_out(a);
	ob = parse_out(b);
	assert_int_equal(oa->n, 3); /* two chunks and [DONE] */
	assert_int_equal(ob->n, 4);
	assert_string_equal(oa->data[2], "[DONE]");
	assert_string_equal(ob->data[3], "[DONE]");
	for (int i = 0; i < 2; i++) {
		cJSON *c = js(oa->data[i]);
		const cJSON *ch = only_choice(c);
		assert_int_equal((int)num(ch, "index"), 0);
		assert_string_equal(str_field(c, "id"), "cmpl-7f3a");
		assert_int_equal((long)num(c, "created"), 1700000123);
		assert_string_equal(str_field(c, "model"), "llama-3");
		assert_string_equal(str_field(c, "object"), "text_completion");
		assert_string_equal(str_field(c, "system_fingerprint"), "fp_x1");
		assert_non_null(cJSON_GetObjectItemCaseSensitive(ch, "stop_reason"));
		assert_non_null(cJSON_GetObjectItemCaseSensitive(ch, "logprobs"));
		/* continuous usage was carpool's request, never the client's: not forwarded */
		assert_null(cJSON_GetObjectItemCaseSensitive(c, "usage"));
	}
	char text[128], fin[32];
	stream_text(oa, 0, text, sizeof text, fin, sizeof fin);
	assert_string_equal(text, "Hello");
	assert_string_equal(fin, "stop");
	stream_text(ob, 0, text, sizeof text, fin, sizeof fin);
	assert_string_equal(text, "World!");
	assert_string_equal(fin, "length");
	/* nobody got the other's text, nor any usage chunk (none asked) */
	assert_null(strstr(a->out.data, "Wor"));
	assert_null(strstr(b->out.data, "Hel"));
	assert_null(strstr(a->out.data, "\"usage\""));
	assert_null(strstr(b->out.data, "\"usage\""));
	assert_true(a->done && b->done);
	assert_int_equal(count_done(a), 1);
	assert_int_equal(count_done(b), 1);
	assert_int_equal(fx.sp.remaining, 0);
}

/* Byte-exact where it matters: a member's chunk is the upstream's chunk with only its index changed
 * (and vLLM's continuous usage removed). */
static void test_openai_chunk_verbatim_but_index(void **state)
{
	(void)state;
	add(1, true, false);
	struct split_member *b = add(1, true, false);
	start(DIALECT_OPENAI, 1);
	const char *up = "{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"text\":"
			 "\"\\u00e9\\n\\\"q\\\"\",\"index\":1,\"logprobs\":null,\"finish_reason\":null}],\"extra\":{\"k\":[1,2]}}";
	assert_int_equal(ev(up), CP_OK);
	const char *want = "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{"
			   "\"text\":\"\xc3\xa9\\n\\\"q\\\"\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"extra\":"
			   "{\"k\":[1,2]}}\n\n";
	assert_string_equal(b->out.data, want);
}

/* Contract 3: k prompts x n choices at slot s: upstream p*n+j -> client (p-s)*n+j. */
static void test_index_mapping_k2_n2(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(2, true, false);
	start(DIALECT_VLLM, 2);
	assert_int_equal(b->slot0, 1);
	assert_int_equal(b->nchoices, 4);
	assert_int_equal(a->nchoices, 2);
	/* upstream order deliberately scrambled */
	unsigned order[] = {5, 0, 3, 2, 1, 4};
	for (unsigned i = 0; i < 6; i++) {
		char t[8];
		snprintf(t, sizeof t, "u%u", order[i]);
		assert_int_equal(ev(vchunk(order[i], t, NULL, NULL)), CP_OK);
	}
	for (unsigned i = 0; i < 6; i++)
		assert_int_equal(ev(vchunk(order[i], "", "stop", NULL)), CP_OK);

	struct sse_out *oa, *ob;
	oa = parse_out(a);
	ob = parse_out(b);
	char text[64], fin[32];
	for (int ci = 0; ci < 4; ci++) {
		char want[8];
		snprintf(want, sizeof want, "u%d", ci + 2);
		stream_text(ob, ci, text, sizeof text, fin, sizeof fin);
		assert_string_equal(text, want);
		assert_string_equal(fin, "stop");
	}
	stream_text(oa, 0, text, sizeof text, NULL, 0);
	assert_string_equal(text, "u0");
	stream_text(oa, 1, text, sizeof text, NULL, 0);
	assert_string_equal(text, "u1");
	/* no index outside [0, nchoices) */
	for (int i = 0; i < ob->n; i++) {
		if (!strcmp(ob->data[i], "[DONE]"))
			continue;
		cJSON *c = js(ob->data[i]);
		int idx = (int)num(only_choice(c), "index");
		assert_in_range(idx, 0, 3);
	}
	/* upstream order kept: B's first chunk is upstream 5 -> client 3 */
	cJSON *first = js(ob->data[0]);
	assert_int_equal((int)num(only_choice(first), "index"), 3);
	assert_true(a->done && b->done);
}

/* Contract 4: a member whose choices all finished ends at once. */
static void test_early_finish(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, true, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "a", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "b", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "", "stop", NULL)), CP_OK);
	assert_true(a->done);
	assert_true(ends_with_done(a));
	assert_false(b->done);
	assert_int_equal(count_done(b), 0);
	assert_int_equal(fx.sp.remaining, 1);
	size_t alen = a->out.len;
	/* more upstream output (even a stray chunk for A) changes nothing for A */
	assert_int_equal(ev(vchunk(0, "late", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "c", NULL, NULL)), CP_OK);
	assert_int_equal(a->out.len, alen);
	assert_int_equal(ev(vchunk(1, "", "length", NULL)), CP_OK);
	assert_true(b->done);
	assert_true(ends_with_done(b));
	assert_int_equal(count_done(a), 1);
	assert_int_equal(fx.sp.remaining, 0);
}

static void test_member_n2_needs_both_choices(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false);
	add(1, true, false);
	start(DIALECT_VLLM, 2);
	assert_int_equal(ev(vchunk(0, "x", "stop", NULL)), CP_OK);
	assert_false(a->done);
	assert_int_equal(ev(vchunk(0, "", "stop", NULL)), CP_OK); /* a repeated finish counts once */
	assert_false(a->done);
	assert_int_equal(ev(vchunk(1, "y", "stop", NULL)), CP_OK);
	assert_true(a->done);
}

/* Contract 5, vLLM: exact usage from continuous_usage_stats, each member its own. */
static void test_vllm_usage_exact_per_member(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, true), *b = add(1, true, true);
	fx.est[0][0] = 99;
	fx.est[1][0] = 99;
	start(DIALECT_VLLM, 1);
	assert_true(a->usage_exact);
	assert_int_equal(ev(vchunk(0, "a1", NULL, vusage(5, 1))), CP_OK);
	assert_int_equal(ev(vchunk(1, "b1", NULL, vusage(7, 1))), CP_OK);
	assert_int_equal(ev(vchunk(0, "a2", NULL, vusage(5, 2))), CP_OK);
	assert_int_equal(ev(vchunk(1, "b2", "stop", vusage(7, 2))), CP_OK);
	assert_int_equal(ev(vchunk(0, "a3", "length", vusage(5, 3))), CP_OK);
	assert_int_equal(ev(vfinal_usage(12, 5)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);

	struct sse_out *oa, *ob;
	oa = parse_out(a);
	ob = parse_out(b);
	/* ... chunks, then its usage chunk, then [DONE] */
	assert_int_equal(oa->n, 5);
	assert_int_equal(ob->n, 4);
	struct {
		struct sse_out *o;
		long pt, ct;
	} want[] = {{oa, 5, 3}, {ob, 7, 2}};
	for (int k = 0; k < 2; k++) {
		struct sse_out *o = want[k].o;
		assert_string_equal(o->data[o->n - 1], "[DONE]");
		cJSON *u = js(o->data[o->n - 2]);
		const cJSON *choices = cJSON_GetObjectItemCaseSensitive(u, "choices");
		assert_true(cJSON_IsArray(choices));
		assert_int_equal(cJSON_GetArraySize(choices), 0);
		assert_string_equal(str_field(u, "id"), "cmpl-7f3a");
		assert_string_equal(str_field(u, "model"), "llama-3");
		const cJSON *usage = cJSON_GetObjectItemCaseSensitive(u, "usage");
		assert_true(cJSON_IsObject(usage));
		assert_int_equal((long)num(usage, "prompt_tokens"), want[k].pt);
		assert_int_equal((long)num(usage, "completion_tokens"), want[k].ct);
		assert_int_equal((long)num(usage, "total_tokens"), want[k].pt + want[k].ct);
		/* exactly one usage, and never the batch total */
		const char *out = k ? b->out.data : a->out.data;
		assert_non_null(strstr(out, "\"usage\""));
		assert_null(strstr(strstr(out, "\"usage\"") + 1, "\"usage\""));
		assert_null(strstr(out, "\"prompt_tokens\":12"));
	}
}

/* vLLM, a member with 2 prompts and n=2: prompt tokens summed per prompt, completion per choice. */
static void test_vllm_usage_multi_prompt(void **state)
{
	(void)state;
	add(1, true, false);
	struct split_member *b = add(2, true, true);
	start(DIALECT_VLLM, 2);
	/* B: upstream choices 2,3 (prompt 1: 4 tokens), 4,5 (prompt 2: 6 tokens) */
	assert_int_equal(ev(vchunk(2, "x", "stop", vusage(4, 3))), CP_OK);
	assert_int_equal(ev(vchunk(3, "x", "stop", vusage(4, 1))), CP_OK);
	assert_int_equal(ev(vchunk(4, "x", "stop", vusage(6, 2))), CP_OK);
	assert_int_equal(ev(vchunk(0, "x", "stop", vusage(50, 50))), CP_OK);
	assert_int_equal(ev(vchunk(5, "x", "stop", vusage(6, 4))), CP_OK);
	assert_true(b->done);
	struct sse_out *o;
	o = parse_out(b);
	assert_string_equal(o->data[o->n - 1], "[DONE]");
	cJSON *u = js(o->data[o->n - 2]);
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(u, "usage");
	assert_int_equal((long)num(usage, "prompt_tokens"), 10);
	assert_int_equal((long)num(usage, "completion_tokens"), 10);
	assert_int_equal((long)num(usage, "total_tokens"), 20);
}

/* Contract 5, OpenAI dialect with 2 members: estimated, from the member's own prompts and chunks. */
static void test_openai_usage_estimated(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, true), *b = add(1, true, false);
	fx.est[0][0] = 4;
	fx.est[1][0] = 6;
	start(DIALECT_OPENAI, 1);
	assert_false(a->usage_exact);
	assert_int_equal(ev(vchunk(0, "a", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "b", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "a", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "", NULL, NULL)), CP_OK); /* an empty chunk is not a token */
	assert_int_equal(ev(vchunk(0, "a", "length", NULL)), CP_OK);
	assert_true(a->done);
	assert_int_equal(ev(vchunk(1, "b", "stop", NULL)), CP_OK);
	assert_int_equal(ev(vfinal_usage(10, 5)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);
	struct sse_out *oa;
	oa = parse_out(a);
	assert_string_equal(oa->data[oa->n - 1], "[DONE]");
	cJSON *u = js(oa->data[oa->n - 2]);
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(u, "usage");
	assert_true(cJSON_IsObject(usage));
	assert_int_equal((long)num(usage, "prompt_tokens"), 4);
	assert_int_equal((long)num(usage, "completion_tokens"), 3);
	assert_int_equal((long)num(usage, "total_tokens"), 7);
	assert_null(strstr(a->out.data, "\"prompt_tokens\":10"));
	/* B did not ask: no usage at all */
	assert_null(strstr(b->out.data, "usage"));
	assert_true(ends_with_done(b));
}

/* A member alone in an OpenAI call: the upstream's usage chunk verbatim, ends at the upstream's [DONE]. */
static void test_openai_alone_passthrough(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, true);
	fx.est[0][0] = 77;
	start(DIALECT_OPENAI, 1);
	assert_true(a->usage_exact);
	assert_int_equal(ev(vchunk(0, "hi", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "", "stop", NULL)), CP_OK);
	assert_false(a->done); /* waits for the upstream's usage chunk */
	const char *final = vfinal_usage(3, 1);
	char saved[600];
	snprintf(saved, sizeof saved, "data: %s\n\ndata: [DONE]\n\n", final);
	assert_int_equal(ev(final), CP_OK);
	assert_false(a->done);
	assert_int_equal(ev("[DONE]"), CP_OK);
	assert_true(a->done);
	size_t n = strlen(saved);
	assert_true(a->out.len >= n);
	assert_string_equal(a->out.data + a->out.len - n, saved);
	assert_int_equal(count_done(a), 1);
	assert_null(strstr(a->out.data, "77"));
}

static void test_openai_alone_no_include_usage(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "hi", "stop", NULL)), CP_OK);
	assert_int_equal(ev(vfinal_usage(3, 1)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);
	assert_true(a->done);
	assert_null(strstr(a->out.data, "usage"));
	assert_true(ends_with_done(a));
	assert_int_equal(count_done(a), 1);
}

/* ---- non-stream assembly ----------------------------------------------------------------------- */

static void test_vllm_nonstream_body(void **state)
{
	(void)state;
	struct split_member *a = add(2, false, false), *b = add(1, false, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev(vchunk(1, "x", NULL, vusage(6, 1))), CP_OK);
	assert_int_equal(ev(vchunk(0, "a", NULL, vusage(4, 1))), CP_OK);
	assert_int_equal(ev(vchunk(2, "q", NULL, vusage(9, 1))), CP_OK);
	assert_int_equal(ev(vchunk(1, "y", "length", vusage(6, 2))), CP_OK);
	assert_false(a->done);
	assert_int_equal(a->out.len, 0); /* nothing until the body is complete */
	assert_int_equal(ev(vchunk(0, "b\\\"c", "stop", vusage(4, 2))), CP_OK);
	assert_true(a->done);
	assert_true(a->dirty);
	assert_int_equal(a->status, 200);
	assert_false(b->done);

	cJSON *body = js(a->out.data);
	assert_true(cJSON_IsObject(body));
	assert_string_equal(str_field(body, "id"), "cmpl-7f3a");
	assert_string_equal(str_field(body, "model"), "llama-3");
	assert_string_equal(str_field(body, "object"), "text_completion");
	assert_int_equal((long)num(body, "created"), 1700000123);
	assert_string_equal(str_field(body, "system_fingerprint"), "fp_x1");
	const cJSON *choices = cJSON_GetObjectItemCaseSensitive(body, "choices");
	assert_int_equal(cJSON_GetArraySize(choices), 2);
	const cJSON *c0 = cJSON_GetArrayItem(choices, 0), *c1 = cJSON_GetArrayItem(choices, 1);
	assert_int_equal((int)num(c0, "index"), 0);
	assert_string_equal(str_field(c0, "text"), "ab\"c");
	assert_string_equal(str_field(c0, "finish_reason"), "stop");
	assert_int_equal((int)num(c1, "index"), 1);
	assert_string_equal(str_field(c1, "text"), "xy");
	assert_string_equal(str_field(c1, "finish_reason"), "length");
	assert_non_null(cJSON_GetObjectItemCaseSensitive(c0, "stop_reason"));
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(body, "usage");
	assert_int_equal((long)num(usage, "prompt_tokens"), 10);
	assert_int_equal((long)num(usage, "completion_tokens"), 4);
	assert_int_equal((long)num(usage, "total_tokens"), 14);

	assert_int_equal(ev(vchunk(2, "r", "stop", vusage(9, 2))), CP_OK);
	assert_true(b->done);
	body = js(b->out.data);
	choices = cJSON_GetObjectItemCaseSensitive(body, "choices");
	assert_int_equal(cJSON_GetArraySize(choices), 1);
	assert_string_equal(str_field(choices->child, "text"), "qr");
	assert_int_equal((int)num(choices->child, "index"), 0);
	usage = cJSON_GetObjectItemCaseSensitive(body, "usage");
	assert_int_equal((long)num(usage, "prompt_tokens"), 9);
	assert_int_equal((long)num(usage, "completion_tokens"), 2);
}

/* A non-stream member alone in an OpenAI call: the upstream's usage figures. */
static void test_openai_nonstream_alone_usage(void **state)
{
	(void)state;
	struct split_member *a = add(1, false, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "he", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "llo", "stop", NULL)), CP_OK);
	assert_int_equal(ev(vfinal_usage(11, 2)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);
	assert_true(a->done);
	assert_int_equal(a->status, 200);
	cJSON *body = js(a->out.data);
	const cJSON *choices = cJSON_GetObjectItemCaseSensitive(body, "choices");
	assert_string_equal(str_field(choices->child, "text"), "hello");
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(body, "usage");
	assert_int_equal((long)num(usage, "prompt_tokens"), 11);
	assert_int_equal((long)num(usage, "completion_tokens"), 2);
}

/* ---- llama.cpp --------------------------------------------------------------------------------- */

/* 03b's shape: 3 prompts, one choice per event, slot order, per-prompt final chunk with usage. */
static void test_llamacpp_stream(void **state)
{
	(void)state;
	struct split_member *a = add(2, true, true), *b = add(1, true, false);
	start(DIALECT_LLAMACPP, 1);
	assert_true(a->usage_exact);
	assert_int_equal(ev(lchunk(1, " a")), CP_OK);
	assert_int_equal(ev(lchunk(0, ",")), CP_OK);
	assert_int_equal(ev(lchunk(2, " saw")), CP_OK);
	assert_int_equal(ev(lchunk(1, " big")), CP_OK);
	assert_int_equal(ev(lchunk(0, " there")), CP_OK);
	assert_int_equal(ev(lchunk(2, " a")), CP_OK);
	assert_int_equal(ev(lfinal(1, 2, 7, 6)), CP_OK);
	assert_false(a->done);
	assert_int_equal(ev(lfinal(0, 2, 5, 4)), CP_OK);
	assert_true(a->done);
	assert_true(ends_with_done(a));
	assert_false(b->done);
	assert_int_equal(ev(lfinal(2, 2, 13, 1)), CP_OK);
	assert_true(b->done);
	assert_int_equal(ev("[DONE]"), CP_OK);

	struct sse_out *oa, *ob;
	oa = parse_out(a);
	ob = parse_out(b);
	assert_int_equal(oa->n, 7); /* 4 tokens, 2 finals, [DONE]: llama.cpp has no usage-only chunk */
	assert_int_equal(ob->n, 4);
	char text[64], fin[32];
	stream_text(oa, 0, text, sizeof text, fin, sizeof fin);
	assert_string_equal(text, ", there");
	assert_string_equal(fin, "length");
	stream_text(oa, 1, text, sizeof text, fin, sizeof fin);
	assert_string_equal(text, " a big");
	stream_text(ob, 0, text, sizeof text, fin, sizeof fin);
	assert_string_equal(text, " saw a");
	assert_string_equal(fin, "length");
	/* first A event is upstream index 1 -> client 1; the final of prompt 0 keeps its own usage/timings */
	cJSON *c = js(oa->data[0]);
	assert_int_equal((int)num(only_choice(c), "index"), 1);
	assert_string_equal(str_field(c, "system_fingerprint"), "b4748-c392e5094");
	assert_string_equal(str_field(c, "id"), "chatcmpl-kLhGHp6YdQyRA1oyrZaGKFWP3nuVAB6A");
	c = js(oa->data[5]);
	assert_int_equal((int)num(only_choice(c), "index"), 0);
	const cJSON *usage = cJSON_GetObjectItemCaseSensitive(c, "usage");
	assert_int_equal((long)num(usage, "prompt_tokens"), 5);
	assert_int_equal((long)num(usage, "completion_tokens"), 2);
	assert_int_equal((long)num(cJSON_GetObjectItemCaseSensitive(c, "timings"), "prompt_n"), 4);
	c = js(ob->data[2]);
	assert_int_equal((int)num(only_choice(c), "index"), 0);
	assert_int_equal((long)num(cJSON_GetObjectItemCaseSensitive(c, "usage"), "prompt_tokens"), 13);
	assert_int_equal(count_done(a), 1);
	assert_int_equal(count_done(b), 1);
}

/* 02's shape: ≥2 prompts -> an ARRAY of per-prompt objects; one prompt -> one object. */
static void test_llamacpp_nonstream(void **state)
{
	(void)state;
	struct split_member *a = add(2, false, false), *b = add(1, false, false);
	start(DIALECT_LLAMACPP, 1);
	assert_int_equal(ev(lchunk(1, " a")), CP_OK);
	assert_int_equal(ev(lchunk(0, ",")), CP_OK);
	assert_int_equal(ev(lchunk(2, " saw")), CP_OK);
	assert_int_equal(ev(lchunk(1, " big")), CP_OK);
	assert_int_equal(ev(lchunk(0, " there")), CP_OK);
	assert_int_equal(ev(lfinal(1, 2, 7, 6)), CP_OK);
	assert_int_equal(ev(lfinal(0, 2, 5, 4)), CP_OK);
	assert_true(a->done);
	assert_int_equal(a->status, 200);
	assert_int_equal(ev(lfinal(2, 1, 13, 1)), CP_OK);
	assert_true(b->done);
	assert_int_equal(ev("[DONE]"), CP_OK);

	cJSON *arr = js(a->out.data);
	assert_true(cJSON_IsArray(arr));
	assert_int_equal(cJSON_GetArraySize(arr), 2);
	const char *want_text[] = {", there", " a big"};
	long want_pt[] = {5, 7};
	for (int p = 0; p < 2; p++) {
		const cJSON *o = cJSON_GetArrayItem(arr, p);
		assert_true(cJSON_IsObject(o));
		assert_string_equal(str_field(o, "object"), "text_completion");
		assert_string_equal(str_field(o, "model"), "stories260K");
		assert_string_equal(str_field(o, "system_fingerprint"), "b4748-c392e5094");
		assert_string_equal(str_field(o, "id"), "chatcmpl-kLhGHp6YdQyRA1oyrZaGKFWP3nuVAB6A");
		const cJSON *ch = only_choice(o);
		assert_int_equal((int)num(ch, "index"), p);
		assert_string_equal(str_field(ch, "text"), want_text[p]);
		assert_non_null(str_field(ch, "finish_reason"));
		assert_string_equal(str_field(ch, "finish_reason"), "length");
		assert_true(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(ch, "logprobs")));
		const cJSON *usage = cJSON_GetObjectItemCaseSensitive(o, "usage");
		assert_true(cJSON_IsObject(usage));
		assert_int_equal((long)num(usage, "prompt_tokens"), want_pt[p]);
		assert_int_equal((long)num(usage, "completion_tokens"), 2);
		assert_true(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(o, "timings")));
	}

	cJSON *one = js(b->out.data);
	assert_true(cJSON_IsObject(one));
	const cJSON *ch = only_choice(one);
	assert_int_equal((int)num(ch, "index"), 0);
	assert_string_equal(str_field(ch, "text"), " saw");
	assert_non_null(str_field(ch, "finish_reason"));
	assert_int_equal((long)num(cJSON_GetObjectItemCaseSensitive(one, "usage"), "prompt_tokens"), 13);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static void test_upstream_error_data_event(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false), *c = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev(vchunk(0, "x", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(2, "", "stop", NULL)), CP_OK); /* C finished before the error */
	assert_true(c->done);
	size_t clen = c->out.len;
	const char *err = "{\"error\":{\"object\":\"error\",\"message\":\"boom\",\"type\":\"BadRequestError\",\"param\":null,"
			  "\"code\":400}}";
	assert_int_equal(ev(err), CP_OK);
	assert_true(a->done);
	assert_true(b->done);
	assert_int_equal(fx.sp.remaining, 0);
	struct sse_out *oa;
	oa = parse_out(a);
	assert_int_equal(oa->n, 3);
	cJSON *e = js(oa->data[1]);
	assert_string_equal(str_field(cJSON_GetObjectItemCaseSensitive(e, "error"), "message"), "boom");
	assert_string_equal(oa->data[2], "[DONE]");
	assert_int_equal(b->status, 400);
	cJSON *body = js(b->out.data);
	const cJSON *eo = cJSON_GetObjectItemCaseSensitive(body, "error");
	assert_true(cJSON_IsObject(eo));
	assert_string_equal(str_field(eo, "message"), "boom");
	assert_int_equal(c->out.len, clen); /* a finished member is untouched */
	/* later events and the end change nothing */
	assert_int_equal(ev("[DONE]"), CP_OK);
	split_end(&fx.sp, 502, "late");
	assert_int_equal(count_done(a), 1);
	assert_null(strstr(b->out.data, "late"));
}

/* llama.cpp's mid-stream failure (06d): `error: {"code":400,"message":...,"type":...}` - the error
 * object is the payload itself, not wrapped in {"error":...}. */
static void test_llamacpp_error_field(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false);
	start(DIALECT_LLAMACPP, 1);
	const char *err = "{\"code\":400,\"message\":\"the request exceeds the available context size. try increasing the "
			  "context size or enable context shift\",\"type\":\"invalid_request_error\"}";
	assert_int_equal(split_event(&fx.sp, err, strlen(err), true), CP_OK);
	assert_true(a->done);
	assert_true(b->done);
	assert_true(ends_with_done(a));
	assert_non_null(strstr(a->out.data, "exceeds the available context size"));
	/* the non-stream member gets the upstream's status and message */
	assert_int_equal(b->status, 400);
	cJSON *body = js(b->out.data);
	const cJSON *eo = cJSON_GetObjectItemCaseSensitive(body, "error");
	assert_true(cJSON_IsObject(eo));
	assert_non_null(str_field(eo, "message"));
	assert_non_null(strstr(str_field(eo, "message"), "exceeds the available context size"));
}

/* An upstream error event whose data spans several SSE lines (legal: data lines joined by "\n")
 * must reach the client as valid SSE: every line of the output is a field line. */
static void test_multiline_error_event_stays_sse(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false);
	add(1, true, false);
	start(DIALECT_OPENAI, 1);
	const char *err = "{\"error\":\n{\"message\":\"boom\",\"type\":\"server_error\"}}";
	assert_int_equal(ev(err), CP_OK);
	assert_true(a->done);
	const char *s = a->out.data;
	while (*s) {
		const char *nl = strchr(s, '\n');
		assert_non_null(nl);
		if (nl != s && strncmp(s, "data:", 5) && strncmp(s, "error:", 6))
			fail_msg("not an SSE field line: \"%.*s\"", (int)(nl - s), s);
		s = nl + 1;
	}
	assert_non_null(strstr(a->out.data, "boom"));
}

static void test_split_end_with_error(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "par", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "tial", NULL, NULL)), CP_OK);
	split_end(&fx.sp, 502, "the upstream went away");
	assert_true(a->done && b->done);
	assert_int_equal(fx.sp.remaining, 0);
	struct sse_out *oa;
	oa = parse_out(a);
	assert_int_equal(oa->n, 3);
	cJSON *e = js(oa->data[1]);
	const cJSON *eo = cJSON_GetObjectItemCaseSensitive(e, "error");
	assert_true(cJSON_IsObject(eo));
	assert_string_equal(str_field(eo, "message"), "the upstream went away");
	assert_string_equal(str_field(eo, "type"), "server_error");
	assert_non_null(cJSON_GetObjectItemCaseSensitive(eo, "param"));
	assert_non_null(cJSON_GetObjectItemCaseSensitive(eo, "code"));
	assert_string_equal(oa->data[2], "[DONE]");

	assert_int_equal(b->status, 502);
	cJSON *body = js(b->out.data);
	eo = cJSON_GetObjectItemCaseSensitive(body, "error");
	assert_string_equal(str_field(eo, "message"), "the upstream went away");
	assert_string_equal(str_field(eo, "type"), "server_error");
	assert_null(strstr(b->out.data, "tial")); /* no partial text in an error body */
}

static void test_split_end_early(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false), *c = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev(vchunk(0, "x", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "y", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(2, "z", "stop", NULL)), CP_OK);
	assert_true(c->done);
	split_end(&fx.sp, 0, NULL); /* no [DONE], choices unfinished */
	assert_true(a->done && b->done);
	assert_int_equal(b->status, 502);
	assert_non_null(strstr(b->out.data, "early"));
	struct sse_out *oa;
	oa = parse_out(a);
	assert_int_equal(oa->n, 3);
	assert_non_null(strstr(oa->data[1], "early"));
	assert_string_equal(oa->data[2], "[DONE]");
	/* the finished member is a normal stream */
	assert_null(strstr(c->out.data, "error"));
	assert_int_equal(count_done(c), 1);
}

static void test_split_end_clean(void **state)
{
	(void)state;
	struct split_member *a = add(1, false, false);
	add(1, false, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "x", "stop", NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "y", "stop", NULL)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);
	split_end(&fx.sp, 0, NULL);
	assert_int_equal(a->status, 200);
	cJSON *body = js(a->out.data);
	assert_null(cJSON_GetObjectItemCaseSensitive(body, "error"));
}

/* Contract 7: a gone member gets nothing more while the others go on. */
static void test_member_gone(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev(vchunk(0, "x", NULL, NULL)), CP_OK);
	split_member_gone(&fx.sp, a);
	assert_int_equal(a->out.len, 0);
	assert_false(a->dirty);
	assert_int_equal(fx.sp.remaining, 1);
	split_member_gone(&fx.sp, a); /* twice is harmless */
	assert_int_equal(fx.sp.remaining, 1);
	assert_int_equal(ev(vchunk(0, "y", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "b", NULL, NULL)), CP_OK);
	assert_int_equal(ev(vchunk(0, "", "stop", NULL)), CP_OK);
	assert_int_equal(a->out.len, 0);
	assert_false(a->dirty);
	assert_int_equal(ev(vchunk(1, "", "stop", NULL)), CP_OK);
	assert_true(b->done);
	assert_true(ends_with_done(b));
	assert_int_equal(ev("[DONE]"), CP_OK);
	assert_int_equal(a->out.len, 0);
	assert_int_equal(fx.sp.remaining, 0);
}

/* ... and that stays true when the call then fails or ends early. */
static void test_member_gone_then_error_end(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false), *c = add(1, true, false);
	start(DIALECT_OPENAI, 1);
	assert_int_equal(ev(vchunk(0, "x", NULL, NULL)), CP_OK);
	split_member_gone(&fx.sp, a);
	split_member_gone(&fx.sp, b);
	split_end(&fx.sp, 502, "the upstream went away");
	assert_int_equal(a->out.len, 0);
	assert_false(a->dirty);
	assert_int_equal(b->out.len, 0);
	assert_false(b->dirty);
	assert_true(c->done);
	assert_non_null(strstr(c->out.data, "the upstream went away"));
}

static void test_member_gone_then_early_end(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev(vchunk(0, "x", NULL, NULL)), CP_OK);
	split_member_gone(&fx.sp, a);
	split_end(&fx.sp, 0, NULL);
	assert_int_equal(a->out.len, 0);
	assert_false(a->dirty);
	assert_true(b->done);
	assert_non_null(strstr(b->out.data, "early"));
}

static void test_all_gone(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, false, false);
	start(DIALECT_OPENAI, 1);
	split_member_gone(&fx.sp, a);
	split_member_gone(&fx.sp, b);
	assert_int_equal(fx.sp.remaining, 0); /* the caller can cancel the call */
	assert_int_equal(ev(vchunk(0, "x", "stop", NULL)), CP_OK);
	assert_int_equal(ev(vchunk(1, "y", "stop", NULL)), CP_OK);
	assert_int_equal(ev("[DONE]"), CP_OK);
	assert_int_equal(a->out.len, 0);
	assert_int_equal(b->out.len, 0);
}

static void test_malformed_events(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false), *b = add(1, true, false);
	start(DIALECT_VLLM, 1);
	assert_int_equal(ev("not json"), CP_ERROR);
	assert_int_equal(ev(""), CP_ERROR);
	assert_int_equal(ev("[1,2]"), CP_ERROR);
	assert_int_equal(ev("\"x\""), CP_ERROR);
	assert_int_equal(ev("{\"id\":\"x\"}"), CP_ERROR);			   /* choices missing */
	assert_int_equal(ev("{\"choices\":{\"index\":0}}"), CP_ERROR);	   /* not an array */
	assert_int_equal(ev("{\"choices\":[{\"text\":\"x\"}]}"), CP_ERROR);   /* index missing */
	assert_int_equal(ev("{\"choices\":[{\"index\":\"0\",\"text\":\"x\"}]}"), CP_ERROR);
	assert_int_equal(ev("{\"choices\":[{\"index\":-1,\"text\":\"x\"}]}"), CP_ERROR);
	assert_int_equal(ev(vchunk(2, "x", NULL, NULL)), CP_ERROR); /* out of range: 2 slots */
	assert_int_equal(ev(vchunk(4000000000u, "x", NULL, NULL)), CP_ERROR);
	assert_int_equal(ev("{\"choices\":[{\"index\":1e300,\"text\":\"x\"}]}"), CP_ERROR);
	assert_int_equal(ev("{\"choices\":[\"x\"]}"), CP_ERROR);
	assert_int_equal(split_event(&fx.sp, "{\"choices\":[]", 13, false), CP_ERROR); /* truncated */
	assert_int_equal(a->out.len, 0);
	assert_int_equal(b->out.len, 0);
	assert_false(a->done || b->done);
	/* the splitter still works */
	assert_int_equal(ev(vchunk(1, "ok", "stop", NULL)), CP_OK);
	assert_true(b->done);
	assert_non_null(strstr(b->out.data, "\"ok\""));
}

/* Embedded NULs must not read past the event: the length is what counts. */
static void test_event_length_respected(void **state)
{
	(void)state;
	struct split_member *a = add(1, true, false);
	add(1, true, false);
	start(DIALECT_OPENAI, 1);
	char buf[256];
	const char *good = vchunk(0, "x", NULL, NULL);
	size_t n = strlen(good);
	memcpy(buf, good, n);
	memcpy(buf + n, "GARBAGE", 8);
	assert_int_equal(split_event(&fx.sp, buf, n, false), CP_OK);
	assert_null(strstr(a->out.data, "GARBAGE"));
	assert_int_equal(split_event(&fx.sp, "[DONE]xyz", 6, false), CP_OK);
	assert_true(fx.sp.upstream_done);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_vllm_two_members_own_choices),
		T(test_openai_chunk_verbatim_but_index),
		T(test_index_mapping_k2_n2),
		T(test_early_finish),
		T(test_member_n2_needs_both_choices),
		T(test_vllm_usage_exact_per_member),
		T(test_vllm_usage_multi_prompt),
		T(test_openai_usage_estimated),
		T(test_openai_alone_passthrough),
		T(test_openai_alone_no_include_usage),
		T(test_vllm_nonstream_body),
		T(test_openai_nonstream_alone_usage),
		T(test_llamacpp_stream),
		T(test_llamacpp_nonstream),
		T(test_upstream_error_data_event),
		T(test_llamacpp_error_field),
		T(test_multiline_error_event_stays_sse),
		T(test_split_end_with_error),
		T(test_split_end_early),
		T(test_split_end_clean),
		T(test_member_gone),
		T(test_member_gone_then_error_end),
		T(test_member_gone_then_early_end),
		T(test_all_gone),
		T(test_malformed_events),
		T(test_event_length_respected),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
