/* Unit tests for src/intake.c: /v1/completions validation and the canonical batch key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/intake.h"

static int parse(const char *body, struct intake_req *r, struct intake_error *e)
{
	memset(e, 0, sizeof *e);
	return intake_parse_completion(body, strlen(body), r, e);
}

static void ok(const char *body, struct intake_req *r)
{
	struct intake_error e;
	int rc = parse(body, r, &e);
	if (rc != CP_OK)
		fail_msg("refused %s: %d %s", body, e.status, e.message);
	assert_non_null(r->body);
	assert_non_null(r->prompts);
	assert_non_null(r->key);
	assert_int_equal(cJSON_GetArraySize(r->prompts), (int)r->nprompts);
}

/* The body must be refused with 400 and param (NULL: none). */
static void refused(const char *body, const char *param)
{
	struct intake_req r;
	struct intake_error e;
	int rc = parse(body, &r, &e);
	if (rc != CP_ERROR)
		fail_msg("accepted %s", body);
	assert_int_equal(e.status, 400);
	assert_non_null(e.type);
	assert_string_equal(e.type, "invalid_request_error");
	assert_true(e.message[0] != 0);
	if (param) {
		assert_non_null(e.param);
		assert_string_equal(e.param, param);
	} else {
		assert_null(e.param);
	}
	/* nothing is left to free */
	assert_null(r.body);
	assert_null(r.prompts);
	assert_null(r.key);
}

static void test_string_prompt(void **state)
{
	(void)state;
	struct intake_req r;
	ok("{\"model\":\"m\",\"prompt\":\"hello\"}", &r);
	assert_int_equal(r.nprompts, 1);
	assert_int_equal(r.kind, PROMPT_TEXT);
	assert_int_equal(r.n, 1);
	assert_false(r.stream);
	assert_false(r.include_usage);
	assert_string_equal(cJSON_GetArrayItem(r.prompts, 0)->valuestring, "hello");
	assert_int_equal(r.prompt_bytes, 5);
	intake_free(&r);
}

static void test_array_of_strings(void **state)
{
	(void)state;
	struct intake_req r;
	ok("{\"prompt\":[\"a\",\"bc\",\"\"]}", &r);
	assert_int_equal(r.nprompts, 3);
	assert_int_equal(r.kind, PROMPT_TEXT);
	assert_string_equal(cJSON_GetArrayItem(r.prompts, 1)->valuestring, "bc");
	assert_string_equal(cJSON_GetArrayItem(r.prompts, 2)->valuestring, "");
	assert_int_equal(r.prompt_bytes, 3);
	intake_free(&r);
}

static void test_flat_token_array_is_one_prompt(void **state)
{
	(void)state;
	struct intake_req r;
	ok("{\"prompt\":[1,2,3]}", &r);
	assert_int_equal(r.nprompts, 1);
	assert_int_equal(r.kind, PROMPT_TOKENS);
	cJSON *p0 = cJSON_GetArrayItem(r.prompts, 0);
	assert_true(cJSON_IsArray(p0));
	assert_int_equal(cJSON_GetArraySize(p0), 3);
	assert_int_equal(cJSON_GetArrayItem(p0, 2)->valueint, 3);
	intake_free(&r);
}

static void test_array_of_token_arrays(void **state)
{
	(void)state;
	struct intake_req r;
	ok("{\"prompt\":[[1,2],[3],[4,5,6]]}", &r);
	assert_int_equal(r.nprompts, 3);
	assert_int_equal(r.kind, PROMPT_TOKENS);
	assert_int_equal(cJSON_GetArraySize(cJSON_GetArrayItem(r.prompts, 2)), 3);
	assert_int_equal(cJSON_GetArrayItem(cJSON_GetArrayItem(r.prompts, 1), 0)->valueint, 3);
	intake_free(&r);
}

static void test_n_and_stream(void **state)
{
	(void)state;
	struct intake_req r;
	ok("{\"prompt\":\"x\",\"n\":3,\"stream\":true}", &r);
	assert_int_equal(r.n, 3);
	assert_true(r.stream);
	assert_false(r.include_usage);
	intake_free(&r);

	ok("{\"prompt\":\"x\",\"stream\":false,\"stream_options\":{\"include_usage\":true}}", &r);
	assert_false(r.stream);
	assert_true(r.include_usage);
	intake_free(&r);

	ok("{\"prompt\":\"x\",\"stream\":true,\"stream_options\":{\"include_usage\":false}}", &r);
	assert_true(r.stream);
	assert_false(r.include_usage);
	intake_free(&r);

	ok("{\"prompt\":\"x\",\"n\":null,\"stream\":null,\"stream_options\":null}", &r);
	assert_int_equal(r.n, 1);
	assert_false(r.stream);
	intake_free(&r);

	ok("{\"prompt\":\"x\",\"n\":128}", &r);
	assert_int_equal(r.n, 128);
	intake_free(&r);
}

static void test_errors(void **state)
{
	(void)state;
	refused("{\"prompt\":", NULL);
	refused("not json", NULL);
	refused("", NULL);
	refused("[{\"prompt\":\"x\"}]", NULL);
	refused("42", NULL);
	refused("\"prompt\"", NULL);
	refused("{\"model\":\"m\"}", "prompt");
	refused("{\"prompt\":5}", "prompt");
	refused("{\"prompt\":null}", "prompt");
	refused("{\"prompt\":{\"a\":1}}", "prompt");
	refused("{\"prompt\":[]}", "prompt");
	refused("{\"prompt\":[[]]}", "prompt");
	refused("{\"prompt\":[[1],[]]}", "prompt");
	refused("{\"prompt\":[\"a\",[1]]}", "prompt");
	refused("{\"prompt\":[[1],\"a\"]}", "prompt");
	refused("{\"prompt\":[1,\"a\"]}", "prompt");
	refused("{\"prompt\":[\"a\",1]}", "prompt");
	refused("{\"prompt\":[1.5]}", "prompt");
	refused("{\"prompt\":[[1.5]]}", "prompt");
	refused("{\"prompt\":[null]}", "prompt");
	refused("{\"prompt\":\"x\",\"n\":0}", "n");
	refused("{\"prompt\":\"x\",\"n\":-1}", "n");
	refused("{\"prompt\":\"x\",\"n\":200}", "n");
	refused("{\"prompt\":\"x\",\"n\":129}", "n");
	refused("{\"prompt\":\"x\",\"n\":1.5}", "n");
	refused("{\"prompt\":\"x\",\"n\":\"2\"}", "n");
	refused("{\"prompt\":\"x\",\"stream\":\"yes\"}", "stream");
	refused("{\"prompt\":\"x\",\"stream\":1}", "stream");
	refused("{\"prompt\":\"x\",\"stream_options\":3}", "stream_options");
	refused("{\"prompt\":\"x\",\"stream_options\":{\"include_usage\":\"yes\"}}", "stream_options.include_usage");
	refused("{\"prompt\":\"x\",\"model\":5}", "model");
	refused("{\"prompt\":\"x\",\"model\":null}", "model");
}

/* Whether a and b get the same batch key. */
static bool same_key(const char *a, const char *b)
{
	struct intake_req ra, rb;
	ok(a, &ra);
	ok(b, &rb);
	bool same = !strcmp(ra.key, rb.key);
	intake_free(&ra);
	intake_free(&rb);
	return same;
}

/* JSON text is one value in UTF-8 and nothing after it but blanks (OpenAI answers 400 otherwise). */
static void test_strict_json_text(void **state)
{
	(void)state;
	struct intake_req r;
	refused("{\"prompt\":\"a\"}{\"prompt\":\"b\"}", NULL);
	refused("{\"prompt\":\"a\"} x", NULL);
	refused("{\"prompt\":\"\xff\"}", NULL);		  /* not UTF-8 */
	refused("{\"prompt\":\"\xc0\xaf\"}", NULL);	  /* overlong "/" */
	refused("{\"prompt\":\"\xed\xa0\x80\"}", NULL);	  /* a surrogate */
	refused("{\"prompt\":\"\xf4\x90\x80\x80\"}", NULL); /* past U+10FFFF */
	refused("{\"prompt\":\"\xe2\x82\"}", NULL);	  /* cut short */
	ok("{\"prompt\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"}\r\n ", &r);
	intake_free(&r);
}

static void test_key_equal(void **state)
{
	(void)state;
	const char *base = "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5}";
	assert_true(same_key(base, "{\"model\":\"m\",\"prompt\":\"two\",\"max_tokens\":8,\"temperature\":0.5}"));
	assert_true(same_key(base, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"],\"max_tokens\":8,\"temperature\":0.5}"));
	assert_true(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5,"
				   "\"stream\":true,\"stream_options\":{\"include_usage\":true}}"));
	assert_true(same_key(base, " { \"temperature\" : 0.5 ,\n\t\"max_tokens\":8, \"prompt\":\"z\", \"model\":\"m\" } "));
	assert_true(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8.0,\"temperature\":0.50}"));
	assert_true(same_key("{\"prompt\":\"x\",\"o\":{\"a\":1,\"b\":2}}", "{\"prompt\":\"y\",\"o\":{\"b\":2, \"a\":1}}"));
	assert_true(same_key("{\"prompt\":[1,2],\"x\":1}", "{\"prompt\":[[3],[4]],\"x\":1}"));
}

static void test_key_different(void **state)
{
	(void)state;
	const char *base = "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5}";
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":9,\"temperature\":0.5}"));
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.6}"));
	assert_false(same_key(base, "{\"model\":\"M\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5}"));
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5,\"n\":2}"));
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":\"8\",\"temperature\":0.5}"));
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"max_tokens\":8,\"temperature\":0.5,\"stop\":null}"));
	assert_false(same_key(base, "{\"model\":\"m\",\"prompt\":\"one\",\"temperature\":0.5}"));
	assert_false(same_key("{\"prompt\":\"x\",\"o\":{\"a\":1}}", "{\"prompt\":\"x\",\"o\":{\"a\":2}}"));
	assert_false(same_key("{\"prompt\":\"x\",\"o\":{\"a\":{\"b\":[1,2]}}}", "{\"prompt\":\"x\",\"o\":{\"a\":{\"b\":[2,1]}}}"));
	assert_false(same_key("{\"prompt\":\"x\",\"stop\":[\"a\",\"b\"]}", "{\"prompt\":\"x\",\"stop\":[\"b\",\"a\"]}"));
	assert_false(same_key("{\"prompt\":\"x\",\"v\":1}", "{\"prompt\":\"x\",\"v\":\"1\"}"));
	assert_false(same_key("{\"prompt\":\"x\",\"v\":true}", "{\"prompt\":\"x\",\"v\":1}"));
	assert_false(same_key("{\"prompt\":\"x\",\"v\":null}", "{\"prompt\":\"x\",\"v\":false}"));
	/* a text prompt and a token prompt never share a call */
	assert_false(same_key("{\"prompt\":\"x\",\"model\":\"m\"}", "{\"prompt\":[1,2],\"model\":\"m\"}"));
	assert_false(same_key("{\"prompt\":[\"x\"],\"model\":\"m\"}", "{\"prompt\":[[1]],\"model\":\"m\"}"));
}

/* The key must not be confusable through crafted strings: a value that contains the text of
 * another key/value pair must not collide with that pair. */
static void test_key_no_injection(void **state)
{
	(void)state;
	assert_false(same_key("{\"prompt\":\"x\",\"a\":\"1\\\",\\\"b\\\":\\\"2\"}", "{\"prompt\":\"x\",\"a\":\"1\",\"b\":\"2\"}"));
	assert_false(same_key("{\"prompt\":\"x\",\"a\\\":1,\\\"b\":1}", "{\"prompt\":\"x\",\"a\":1,\"b\":1}"));
}

static char *canon_of(const char *json)
{
	cJSON *v = cJSON_Parse(json);
	assert_non_null(v);
	char *s = intake_canonical(v);
	cJSON_Delete(v);
	assert_non_null(s);
	return s;
}

static void check_canon(const char *json, const char *want)
{
	char *s = canon_of(json);
	assert_string_equal(s, want);
	free(s);
}

static void test_canonical(void **state)
{
	(void)state;
	check_canon("{\"b\":1,\"a\":{\"z\":[3,1,{\"y\":1,\"x\":2}],\"c\":null}}",
		    "{\"a\":{\"c\":null,\"z\":[3,1,{\"x\":2,\"y\":1}]},\"b\":1}");
	check_canon(" [ 1 , 2.0 , 1.0e0, -0, true, false, null, \"s\" ] ", "[1,2,1,0,true,false,null,\"s\"]");
	check_canon("{}", "{}");
	check_canon("[]", "[]");
	check_canon("{\"a\":[]}", "{\"a\":[]}");
	check_canon("0.5", "0.5");
	check_canon("1e300", "1.0000000000000001e+300");
	check_canon("\"q\\\"b\\\\c\\n\\t\\u0001\\u001f\"", "\"q\\\"b\\\\c\\u000a\\u0009\\u0001\\u001f\"");
	check_canon("\"h\xc3\xa9\"", "\"h\xc3\xa9\"");
	check_canon("{\"k\\\"\":1}", "{\"k\\\"\":1}");
	/* 1.0 and 1 are one value; 0.1+0.2-ish floats keep their full precision */
	char *a = canon_of("{\"t\":1.0}"), *b = canon_of("{\"t\":1}");
	assert_string_equal(a, b);
	free(a);
	free(b);
	a = canon_of("0.30000000000000004");
	b = canon_of("0.3");
	assert_string_not_equal(a, b);
	free(a);
	free(b);
}

/* The canonical form of a string must itself be valid JSON that parses back to the same value. */
static void test_canonical_roundtrip(void **state)
{
	(void)state;
	const char *src = "{\"z\":\"a\\u0000b\",\"y\":\"\\u007f\\u00e9\\ud83d\\ude00\",\"x\":[\"\\\\\",\"\\/\"],"
			  "\"w\":-12.25,\"v\":123456789012}";
	cJSON *v = cJSON_Parse(src);
	assert_non_null(v);
	char *s = intake_canonical(v);
	cJSON *back = cJSON_Parse(s);
	assert_non_null(back);
	assert_true(cJSON_Compare(v, back, true));
	char *s2 = intake_canonical(back);
	assert_string_equal(s, s2);
	free(s);
	free(s2);
	cJSON_Delete(v);
	cJSON_Delete(back);
}

/* Duplicate top-level keys: cJSON keeps both and lookups see the first, but upstream servers
 * (Python's json, nlohmann) take the LAST. A second "prompt"/"stream"/"stream_options" would survive
 * into the key and into the merged upstream body (build_body copies members[0]'s body), so the
 * upstream would see a different prompt list than carpool counted. Either refuse such a body with
 * 400, or leave no second copy behind. */
static int count_named(const cJSON *obj, const char *name)
{
	int n = 0;
	for (const cJSON *e = obj->child; e; e = e->next)
		if (e->string && !strcmp(e->string, name))
			n++;
	return n;
}

static void test_duplicate_keys_in_body(void **state)
{
	(void)state;
	const char *bodies[] = {
		"{\"prompt\":\"x\",\"prompt\":[\"y\",\"z\"],\"m\":1}",
		"{\"prompt\":\"x\",\"stream\":true,\"stream\":false}",
		"{\"prompt\":\"x\",\"n\":1,\"n\":5}",
	};
	for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
		struct intake_req r;
		struct intake_error e;
		if (parse(bodies[i], &r, &e) == CP_ERROR) {
			assert_int_equal(e.status, 400);
			continue;
		}
		int nprompt = count_named(r.body, "prompt"), nstream = count_named(r.body, "stream");
		int nn = count_named(r.body, "n");
		bool key_has_prompt = strstr(r.key, "\"prompt\"") != NULL;
		bool key_has_stream = strstr(r.key, "\"stream\"") != NULL;
		intake_free(&r); /* before asserting: no leak when it fails */
		assert_int_equal(nprompt, 1);
		assert_true(nstream <= 1);
		assert_true(nn <= 1);
		assert_false(key_has_prompt);
		assert_false(key_has_stream);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_string_prompt),
		cmocka_unit_test(test_array_of_strings),
		cmocka_unit_test(test_flat_token_array_is_one_prompt),
		cmocka_unit_test(test_array_of_token_arrays),
		cmocka_unit_test(test_n_and_stream),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_strict_json_text),
		cmocka_unit_test(test_key_equal),
		cmocka_unit_test(test_key_different),
		cmocka_unit_test(test_key_no_injection),
		cmocka_unit_test(test_canonical),
		cmocka_unit_test(test_canonical_roundtrip),
		cmocka_unit_test(test_duplicate_keys_in_body),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
