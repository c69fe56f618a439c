/* Unit tests for src/promtext.c: the load gauges of vLLM, SGLang and llama.cpp's Prometheus text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/promtext.h"

/* Feeds text whole, then again one byte at a time: both give rc and *out (the same). */
static int parse(const char *text, struct prom_load *out)
{
	struct prom_parser a, b;
	struct prom_load la = {0}, lb = {0};
	prom_init(&a);
	prom_init(&b);
	prom_feed(&a, text, strlen(text));
	for (const char *p = text; *p; p++)
		prom_feed(&b, p, 1);
	int ra = prom_finish(&a, &la), rb = prom_finish(&b, &lb);
	assert_int_equal(ra, rb);
	assert_true(la.running == lb.running && la.waiting == lb.waiting);
	*out = la;
	return ra;
}

static void test_vllm(void **state)
{
	(void)state;
	struct prom_load l;
	assert_int_equal(parse("# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
			       "# TYPE vllm:num_requests_running gauge\n"
			       "vllm:num_requests_running{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B\"} 12.0\n"
			       "# TYPE vllm:num_requests_waiting gauge\n"
			       "vllm:num_requests_waiting{engine=\"0\",model_name=\"meta-llama/Llama-3.1-8B\"} 3.0\n"
			       "vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"m\"} 40.0\n",
			       &l),
			 CP_OK);
	assert_true(l.has_running && l.has_waiting);
	assert_true(l.running == 12 && l.waiting == 3);
}

static void test_sums_label_sets(void **state)
{
	(void)state;
	struct prom_load l;
	/* data-parallel engines (vLLM) or tensor-parallel ranks (SGLang) each report their own */
	assert_int_equal(parse("sglang:num_running_reqs{model_name=\"q\",tp_rank=\"0\"} 7.0\n"
			       "sglang:num_queue_reqs{model_name=\"q\",tp_rank=\"0\"} 1\n"
			       "sglang:num_running_reqs{model_name=\"q\",tp_rank=\"1\"} 5 1712345678000\n",
			       &l),
			 CP_OK);
	assert_true(l.running == 12 && l.waiting == 1);
}

static void test_llamacpp_crlf_no_final_newline(void **state)
{
	(void)state;
	struct prom_load l;
	assert_int_equal(parse("llamacpp:requests_processing 2\r\nllamacpp:requests_deferred 5", &l), CP_OK);
	assert_true(l.running == 2 && l.waiting == 5);
}

static void test_running_only(void **state)
{
	(void)state;
	struct prom_load l;
	assert_int_equal(parse("vllm:num_requests_running 4\n", &l), CP_OK);
	assert_true(l.has_running && !l.has_waiting);
}

static void test_nothing_known(void **state)
{
	(void)state;
	struct prom_load l;
	assert_int_equal(parse("", &l), CP_DECLINED);
	assert_int_equal(parse("<html><body>Not Found</body></html>\n", &l), CP_DECLINED);
	assert_int_equal(parse("{\"error\":{\"code\":501,\"message\":\"This server does not support metrics\"}}", &l),
			 CP_DECLINED);
	/* a prefix or a longer name is another metric */
	assert_int_equal(parse("vllm:num_requests_running_total 3\nvllm:num_requests 3\n", &l), CP_DECLINED);
	/* only waiting: not enough to say how full the server is */
	assert_int_equal(parse("vllm:num_requests_waiting 3\n", &l), CP_DECLINED);
}

static void test_bad_values_and_labels(void **state)
{
	(void)state;
	struct prom_parser p;
	struct prom_load l;
	const char *text = "vllm:num_requests_running NaN\n"
			   "vllm:num_requests_running -1\n"
			   "vllm:num_requests_running +Inf\n"
			   "vllm:num_requests_running 1e999\n"
			   "vllm:num_requests_running 3x\n"
			   "vllm:num_requests_running{model_name=\"open 4\n"
			   "vllm:num_requests_running{a=\"b\"}5\n"
			   "vllm:num_requests_running\n"
			   "vllm:num_requests_running{model_name=\"a}\\\"b\",x=\"y\"} 6\n";
	prom_init(&p);
	prom_feed(&p, text, strlen(text));
	assert_int_equal(prom_finish(&p, &l), CP_OK);
	assert_true(l.running == 6); /* only the last line: a '}' and a '"' inside a quoted value */
	assert_int_equal(p.bad, 8);
}

static void test_long_and_nul_lines(void **state)
{
	(void)state;
	struct prom_parser p;
	struct prom_load l;
	char big[PROM_MAX_LINE * 2];
	memset(big, 'x', sizeof big);
	prom_init(&p);
	prom_feed(&p, "vllm:num_requests_running{a=\"", 29);
	prom_feed(&p, big, sizeof big); /* too long: skipped whole, up to its newline */
	prom_feed(&p, "\"} 99\nvllm:num_requests_running 2\n", 34);
	prom_feed(&p, "vllm:num_requests_running 5\0 7\n", 31); /* a NUL inside: not text */
	assert_int_equal(prom_finish(&p, &l), CP_OK);
	assert_true(l.running == 2);
	assert_int_equal(p.lines, 3);
	assert_int_equal(p.bad, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_vllm),
		cmocka_unit_test(test_sums_label_sets),
		cmocka_unit_test(test_llamacpp_crlf_no_final_newline),
		cmocka_unit_test(test_running_only),
		cmocka_unit_test(test_nothing_known),
		cmocka_unit_test(test_bad_values_and_labels),
		cmocka_unit_test(test_long_and_nul_lines),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
