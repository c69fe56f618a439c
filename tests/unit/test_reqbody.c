/* Unit tests for src/reqbody.c: the upstream body spliced from the canonical request bytes is the
 * same JSON value as the one built as a tree (the way carpool built it before), for generated
 * batches: random fields, key orders, blanks, escapes, numbers, prompts of both kinds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/reqbody.h"

static uint32_t rng = 2463534242u;
static uint32_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static void parse_ok(const char *body, struct intake_req *r)
{
	struct intake_error e;
	if (intake_parse_completion(body, strlen(body), r, &e) != CP_OK)
		fail_msg("refused %s: %s", body, e.message);
}

/* Both bodies parse, and are equal as JSON values. */
static void same_value(const char *spliced, const char *tree)
{
	cJSON *a = cJSON_Parse(spliced), *b = cJSON_Parse(tree);
	if (!a || !b || !cJSON_Compare(a, b, 1))
		fail_msg("the spliced body differs from the tree's:\n spliced: %s\n tree:    %s", spliced, tree);
	cJSON_Delete(a);
	cJSON_Delete(b);
}

static char *both(const struct intake_req *const *reqs, unsigned n, enum dialect d)
{
	char *s = reqbody_completion(reqs, n, d), *t = reqbody_completion_json(reqs, n, d);
	same_value(s, t);
	free(t);
	return s;
}

static void test_exact_bytes(void **state)
{
	(void)state;
	struct intake_req a, b;
	parse_ok("{\"prompt\":\"hi \\\"you\\\"\\n\",\"stream\":false,\"max_tokens\":8,\"model\":\"m\",\"stream_options\":null}", &a);
	parse_ok("{ \"model\" : \"m\", \"max_tokens\": 8.0, \"prompt\": [\"x\", \"\\u00e9\\u0001\"], \"stream\": true }", &b);
	const struct intake_req *reqs[] = {&a, &b};
	char *s = both(reqs, 2, DIALECT_VLLM);
	assert_string_equal(s, "{\"prompt\":[\"hi \\\"you\\\"\\n\",\"x\",\"\xc3\xa9\\u0001\"],\"stream\":true,\"stream_options\":"
			       "{\"include_usage\":true,\"continuous_usage_stats\":true},\"max_tokens\":8,\"model\":\"m\"}");
	free(s);
	s = both(reqs, 2, DIALECT_LLAMACPP);
	assert_string_equal(s, "{\"prompt\":[\"hi \\\"you\\\"\\n\",\"x\",\"\xc3\xa9\\u0001\"],\"stream\":true,\"max_tokens\":8,"
			       "\"model\":\"m\"}");
	free(s);
	intake_free(&a);
	intake_free(&b);
	/* nothing but the prompt: the object's other members are none */
	parse_ok("{\"prompt\":[[1,2],[3]]}", &a);
	const struct intake_req *one[] = {&a};
	s = both(one, 1, DIALECT_OPENAI);
	assert_string_equal(s, "{\"prompt\":[[1,2],[3]],\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
	free(s);
	intake_free(&a);
}

/* A number beyond double's range: the canonical form would say inf, which is no JSON; the body is
 * then built as a tree (null there, as before). */
static void test_out_of_range_number(void **state)
{
	(void)state;
	static const char *const bodies[] = {
		"{\"prompt\":\"a\",\"temperature\":1e400}",
		"{\"prompt\":\"a\",\"logit_bias\":{\"1\":-1e999}}",
		"{\"prompt\":\"a\",\"x\":[1,1e400]}",
	};
	for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
		struct intake_req r;
		parse_ok(bodies[i], &r);
		const struct intake_req *reqs[] = {&r};
		free(both(reqs, 1, DIALECT_OPENAI));
		intake_free(&r);
	}
	/* the letters in a string do not matter to the value, only to the speed */
	struct intake_req r;
	parse_ok("{\"prompt\":\"a\",\"model\":\"info:inf,nan\"}", &r);
	const struct intake_req *reqs[] = {&r};
	free(both(reqs, 1, DIALECT_OPENAI));
	intake_free(&r);
}

static const char *const strings[] = {
	"\"\"", "\"m\"", "\"a \\\"quoted\\\" \\\\ back\"", "\"line\\nbreak\\ttab\\r\"", "\"caf\\u00e9 \xc3\xa9t\xc3\xa9\"",
	"\"\\ud83d\\ude00\"", "\"ctl \\u0001\\u001f\"", "\"slash \\/ \\b\\f\"", "\"{\\\"json\\\":[1]}\"",
};
static const char *const numbers[] = {"0", "1", "-1", "0.7", "1.5e-7", "-0.0", "1e300", "123456789012345678",
				      "2.5E+3", "100", "1.0", "-3.25"};

static const char *pick(const char *const *a, size_t n) { return a[next() % n]; }
#define PICK(a) pick(a, sizeof a / sizeof a[0])

/* A random value of depth at most d. */
static void value(struct sbuf *b, int d)
{
	switch (next() % (d > 0 ? 7 : 5)) {
	case 0: sbuf_adds(b, PICK(strings)); break;
	case 1: sbuf_adds(b, PICK(numbers)); break;
	case 2: sbuf_adds(b, next() % 2 ? "true" : "false"); break;
	case 3: sbuf_adds(b, "null"); break;
	case 4: sbuf_adds(b, PICK(strings)); break;
	case 5: {
		sbuf_adds(b, "[");
		unsigned n = next() % 4;
		for (unsigned i = 0; i < n; i++) {
			if (i)
				sbuf_adds(b, next() % 3 ? "," : " , ");
			value(b, d - 1);
		}
		sbuf_adds(b, "]");
		break;
	}
	default: {
		sbuf_adds(b, "{");
		unsigned n = next() % 4;
		for (unsigned i = 0; i < n; i++) { /* distinct keys: k0, k1, ... */
			sbuf_printf(b, "%s\"k%u\":", i ? "," : "", i);
			value(b, d - 1);
		}
		sbuf_adds(b, "}");
	}
	}
}

/* One batch: members with the same fields in their own order and blanks, their own prompts and
 * delivery fields; the spliced body and the tree's must be the same value. */
static void one_batch(enum dialect d)
{
	static const char *const names[] = {"model", "max_tokens", "temperature", "stop", "logit_bias", "n", "echo",
					    "user", "suffix", "seed", "extra", "top_p"};
	enum { NF = sizeof names / sizeof names[0] };
	struct sbuf field[NF] = {{0}};
	bool used[NF];
	for (unsigned i = 0; i < NF; i++) {
		used[i] = next() % 2;
		if (!strcmp(names[i], "n")) /* the fields intake checks */
			sbuf_printf(&field[i], "%u", 1 + next() % 3);
		else if (!strcmp(names[i], "model"))
			sbuf_adds(&field[i], PICK(strings));
		else
			value(&field[i], 3);
	}
	bool tokens = next() % 3 == 0;
	unsigned nm = 1 + next() % 4;
	struct intake_req *reqs = calloc(nm, sizeof *reqs);
	const struct intake_req **rp = calloc(nm, sizeof *rp);
	for (unsigned m = 0; m < nm; m++) {
		unsigned order[NF + 3];
		for (unsigned i = 0; i < NF + 3; i++)
			order[i] = i;
		for (unsigned i = NF + 2; i > 0; i--) {
			unsigned j = next() % (i + 1), t = order[i];
			order[i] = order[j];
			order[j] = t;
		}
		struct sbuf b = {0};
		sbuf_adds(&b, next() % 2 ? "{" : " { ");
		bool first = true;
		for (unsigned k = 0; k < NF + 3; k++) {
			unsigned i = order[k];
			const char *sep = first ? "" : next() % 3 ? "," : " ,\n";
			if (i < NF) {
				if (!used[i])
					continue;
				sbuf_printf(&b, "%s\"%s\":%s%s", sep, names[i], next() % 2 ? "" : " ", field[i].data);
			} else if (i == NF) {
				sbuf_printf(&b, "%s\"prompt\":", sep);
				if (tokens && next() % 2) {
					sbuf_printf(&b, "[%u,%u]", next() % 50000, next() % 9);
				} else {
					unsigned np = 1 + next() % 3;
					sbuf_adds(&b, np == 1 && !tokens && next() % 2 ? "" : "[");
					bool bare = b.data[b.len - 1] != '[';
					for (unsigned p = 0; p < np; p++) {
						if (p)
							sbuf_adds(&b, ",");
						if (tokens)
							sbuf_printf(&b, "[%u,%u,%u]", next() % 100, next() % 100000, next() % 7);
						else
							sbuf_adds(&b, PICK(strings));
						if (bare)
							break;
					}
					if (!bare)
						sbuf_adds(&b, "]");
				}
			} else if (i == NF + 1) {
				if (next() % 2)
					continue;
				sbuf_printf(&b, "%s\"stream\":%s", sep, next() % 2 ? "true" : "false");
			} else {
				if (next() % 2)
					continue;
				sbuf_printf(&b, "%s\"stream_options\":%s", sep,
					    next() % 2 ? "null" : "{\"include_usage\":true}");
			}
			first = false;
		}
		sbuf_adds(&b, "}");
		parse_ok(b.data, &reqs[m]);
		rp[m] = &reqs[m];
		sbuf_free(&b);
	}
	for (unsigned m = 1; m < nm; m++) /* the same batch key: what puts them in one batch */
		assert_string_equal(reqs[m].key, reqs[0].key);
	free(both(rp, nm, d));
	for (unsigned m = 0; m < nm; m++)
		intake_free(&reqs[m]);
	for (unsigned i = 0; i < NF; i++)
		sbuf_free(&field[i]);
	free(reqs);
	free(rp);
}

static void test_generated_batches(void **state)
{
	(void)state;
	for (unsigned i = 0; i < 3000; i++)
		one_batch(i % 3 == 0 ? DIALECT_VLLM : i % 3 == 1 ? DIALECT_OPENAI : DIALECT_LLAMACPP);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_exact_bytes),
		cmocka_unit_test(test_out_of_range_number),
		cmocka_unit_test(test_generated_batches),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
