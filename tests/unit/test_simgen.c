/* Unit tests for bench/simgen: the simulator's deterministic output (spec in simgen.h).
 * Expected values were worked out from the spec and cross-checked against tests/e2e/simgen.js. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "simgen.h"

/* Concatenates the first m tokens of seed into out. */
static void text_of(uint32_t seed, unsigned m, char *out, size_t cap)
{
	out[0] = 0;
	for (unsigned i = 0; i < m; i++) {
		char tok[SIMGEN_TOKEN_MAX];
		size_t n = simgen_token(seed, i, tok);
		assert_int_equal(n, strlen(tok));
		assert_true(strlen(out) + n < cap);
		strcat(out, tok);
	}
}

static void test_fnv1a_known(void **state)
{
	(void)state;
	assert_int_equal(simgen_fnv1a("", 0), 2166136261u); /* the FNV offset basis */
	assert_int_equal(simgen_fnv1a("hello", 5), 0x4f9f2cabu);
	assert_int_equal(simgen_fnv1a("1,2,3", 5), 567137239u);
	assert_int_equal(simgen_fnv1a("h\xc3\xa9llo", 6), 1252296000u); /* UTF-8 bytes, not chars */
}

static void test_seed_choice(void **state)
{
	(void)state;
	assert_int_equal(simgen_seed("hello", 5, 0), 1335831723u);
	/* 1335831723 ^ 0x9E3779B9 */
	assert_int_equal(simgen_seed("hello", 5, 1), 3517469970u);
	assert_int_equal(simgen_seed("hello", 5, 2), 1335831723u ^ (uint32_t)(2u * 0x9E3779B9u));
}

static void test_hello_default(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("hello", 5, 0);
	const char *fin = NULL;
	/* 1335831723 % 14 == 9 -> L = 12 */
	assert_int_equal(simgen_length(s, -1, &fin), 12);
	assert_string_equal(fin, "stop");
	char text[512];
	text_of(s, 12, text, sizeof text);
	assert_string_equal(text, " t0-110e t1-af46 t2-4d7d t3-ebb5 t4-89ec t5-2824 t6-c65b t7-6493 t8-02ca t9-a102"
				  " t10-3f39 t11-dd71");
}

static void test_hello_max5_length(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("hello", 5, 0);
	const char *fin = NULL;
	assert_int_equal(simgen_length(s, 5, &fin), 5);
	assert_string_equal(fin, "length");
	char text[256];
	text_of(s, 5, text, sizeof text);
	assert_string_equal(text, " t0-110e t1-af46 t2-4d7d t3-ebb5 t4-89ec");
}

static void test_hello_choice1(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("hello", 5, 1);
	const char *fin = NULL;
	assert_int_equal(simgen_length(s, -1, &fin), 3);
	assert_string_equal(fin, "stop");
	char text[256];
	text_of(s, 3, text, sizeof text);
	assert_string_equal(text, " t0-2654 t1-c48b t2-62c3");
}

static void test_token_ids_key(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("1,2,3", 5, 0);
	const char *fin = NULL;
	assert_int_equal(simgen_length(s, -1, &fin), 14);
	assert_string_equal(fin, "stop");
	char tok[SIMGEN_TOKEN_MAX];
	simgen_token(s, 0, tok);
	assert_string_equal(tok, " t0-d681");
	simgen_token(s, 13, tok);
	assert_string_equal(tok, " t13-df52");
}

static void test_max_tokens_zero_is_one(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("hello", 5, 0);
	const char *fin = NULL;
	assert_int_equal(simgen_length(s, 0, &fin), 1);
	assert_string_equal(fin, "length");
}

static void test_max_tokens_equal_natural_is_stop(void **state)
{
	(void)state;
	uint32_t s = simgen_seed("hello", 5, 0); /* L = 12 */
	const char *fin = NULL;
	assert_int_equal(simgen_length(s, 12, &fin), 12);
	assert_string_equal(fin, "stop");
	assert_int_equal(simgen_length(s, 11, &fin), 11);
	assert_string_equal(fin, "length");
	assert_int_equal(simgen_length(s, 1000, &fin), 12);
	assert_string_equal(fin, "stop");
	/* finish may be NULL */
	assert_int_equal(simgen_length(s, 3, NULL), 3);
}

static void test_length_bounds(void **state)
{
	(void)state;
	bool seen[17] = {false};
	for (uint32_t i = 0; i < 5000; i++) {
		uint32_t s = i * 2654435761u + 12345u;
		unsigned n = simgen_length(s, 100, NULL);
		assert_in_range(n, 3, 16);
		assert_int_equal(n, 3 + s % 14);
		seen[n] = true;
		/* default cap 16 never truncates a natural length */
		const char *fin = NULL;
		assert_int_equal(simgen_length(s, -1, &fin), n);
		assert_string_equal(fin, "stop");
	}
	for (unsigned n = 3; n <= 16; n++)
		assert_true(seen[n]);
}

/* --answer-tokens MIN:MAX: natural lengths MIN + seed % (MAX - MIN + 1); 3:16 is the default rule. */
static void test_answer_range(void **state)
{
	(void)state;
	uint32_t h = simgen_seed("hello", 5, 0);
	const char *fin = NULL;
	/* 1335831723 % 481 == 447 -> L = 467 */
	assert_int_equal(simgen_length_in(h, 20, 500, 1000, &fin), 467);
	assert_string_equal(fin, "stop");
	/* absent max_tokens still caps at 16, like the API's default */
	assert_int_equal(simgen_length_in(h, 20, 500, -1, &fin), 16);
	assert_string_equal(fin, "length");
	assert_int_equal(simgen_length_in(h, 7, 7, 100, NULL), 7);
	bool seen[501] = {false};
	for (uint32_t i = 0; i < 20000; i++) {
		uint32_t s = i * 2654435761u + 777u;
		unsigned n = simgen_length_in(s, 20, 500, 500, &fin);
		assert_in_range(n, 20, 500);
		assert_string_equal(fin, "stop");
		seen[n] = true;
		assert_int_equal(simgen_length_in(s, 3, 16, 100, NULL), simgen_length(s, 100, NULL));
	}
	for (unsigned n = 20; n <= 500; n++)
		assert_true(seen[n]);
}

static void test_parse_answers(void **state)
{
	(void)state;
	unsigned lo = 0, hi = 0;
	assert_true(simgen_parse_answers("20:500", &lo, &hi));
	assert_int_equal(lo, 20);
	assert_int_equal(hi, 500);
	assert_true(simgen_parse_answers("1:1", &lo, &hi));
	assert_int_equal(lo, 1);
	assert_int_equal(hi, 1);
	static const char *const bad[] = { "", "20", "20:", ":500", "0:5", "9:8", "-1:5", "1:-5", "1:100001",
					   "1:5x", " 1:5", "1:+5", "1:5:6" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		lo = hi = 77;
		assert_false(simgen_parse_answers(bad[i], &lo, &hi));
		assert_int_equal(lo, 77);
		assert_int_equal(hi, 77);
	}
}

static void test_token_format(void **state)
{
	(void)state;
	char tok[SIMGEN_TOKEN_MAX];
	size_t n = simgen_token(0xffffffffu, 4294967295u, tok);
	/* " t4294967295-xxxx" is the longest token: it fits */
	assert_int_equal(n, 17);
	assert_int_equal(strlen(tok), 17);
	assert_memory_equal(tok, " t4294967295-", 13);
	for (int i = 13; i < 17; i++)
		assert_non_null(strchr("0123456789abcdef", tok[i]));
}

static void test_prompt_tokens_text(void **state)
{
	(void)state;
	assert_int_equal(simgen_prompt_tokens_text(0), 1);
	assert_int_equal(simgen_prompt_tokens_text(1), 1);
	assert_int_equal(simgen_prompt_tokens_text(4), 1);
	assert_int_equal(simgen_prompt_tokens_text(5), 2);
	assert_int_equal(simgen_prompt_tokens_text(8), 2);
	assert_int_equal(simgen_prompt_tokens_text(9), 3);
}

static void test_embedding_known(void **state)
{
	(void)state;
	/* fnv1a("hello") % 2000 = 1723 */
	assert_float_equal(simgen_embedding("hello", 5, 0), 0.723, 1e-9);
	assert_float_equal(simgen_embedding("hello", 5, 1), 0.642, 1e-9);
	assert_float_equal(simgen_embedding("hello", 5, 2), 0.561, 1e-9);
	for (unsigned k = 0; k < 64; k++) {
		double v = simgen_embedding("abc", 3, k);
		assert_true(v >= -1.0 && v < 1.0);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fnv1a_known),
		cmocka_unit_test(test_seed_choice),
		cmocka_unit_test(test_hello_default),
		cmocka_unit_test(test_hello_max5_length),
		cmocka_unit_test(test_hello_choice1),
		cmocka_unit_test(test_token_ids_key),
		cmocka_unit_test(test_max_tokens_zero_is_one),
		cmocka_unit_test(test_max_tokens_equal_natural_is_stop),
		cmocka_unit_test(test_length_bounds),
		cmocka_unit_test(test_answer_range),
		cmocka_unit_test(test_parse_answers),
		cmocka_unit_test(test_token_format),
		cmocka_unit_test(test_prompt_tokens_text),
		cmocka_unit_test(test_embedding_known),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
