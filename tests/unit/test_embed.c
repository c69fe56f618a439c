/* Unit tests for src/embed.c: embeddings parts planned, answers split back and reassembled. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/embed.h"

static void plan_by_count_and_tokens(void **state)
{
	(void)state;
	unsigned est[7] = {1, 1, 1, 1, 1, 1, 1}, starts[8];
	unsigned n = embed_plan(est, 7, 3, 1000, starts);
	assert_int_equal(n, 3);
	assert_int_equal(starts[0], 0);
	assert_int_equal(starts[1], 3);
	assert_int_equal(starts[2], 6);
	assert_int_equal(starts[3], 7);
	/* by tokens: 4+4 fits 10, the third does not; an input over the limit goes alone */
	unsigned est2[5] = {4, 4, 4, 50, 1};
	n = embed_plan(est2, 5, 100, 10, starts);
	assert_int_equal(n, 4);
	assert_int_equal(starts[0], 0);
	assert_int_equal(starts[1], 2);
	assert_int_equal(starts[2], 3);
	assert_int_equal(starts[3], 4);
	assert_int_equal(starts[4], 5);
	/* one input: one part */
	assert_int_equal(embed_plan(est, 1, 1, 1, starts), 1);
	assert_int_equal(starts[1], 1);
}

static void apportion_adds_up(void **state)
{
	(void)state;
	long w[3] = {1, 1, 1}, out[3];
	embed_apportion(10, w, out, 3);
	assert_int_equal(out[0] + out[1] + out[2], 10);
	assert_int_equal(out[0], 4); /* the equal remainders: the first takes the extra one */
	assert_int_equal(out[1], 3);
	assert_int_equal(out[2], 3);
	long w2[2] = {3, 1}, out2[2];
	embed_apportion(9, w2, out2, 2); /* 6.75 / 2.25: the larger remainder gets the rest */
	assert_int_equal(out2[0], 7);
	assert_int_equal(out2[1], 2);
	long z[2] = {0, 0};
	embed_apportion(5, z, out2, 2);
	assert_int_equal(out2[0], 5);
	assert_int_equal(out2[1], 0);
}

/* The client's reply, parsed. */
static cJSON *reply_json(struct embed_whole *w)
{
	char *body = embed_reply_body(w);
	cJSON *r = cJSON_Parse(body);
	free(body);
	assert_non_null(r);
	return r;
}

static const char *item_at(cJSON *reply, int i, char *buf, size_t len)
{
	cJSON *it = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(reply, "data"), i);
	char *s = cJSON_PrintUnformatted(it);
	snprintf(buf, len, "%s", s);
	free(s);
	return buf;
}

/* Two clients: A has 3 inputs in two parts (2 in the first call, 1 in the second), B has 1 input in
 * the first call. The first call's answer comes out of order. */
static void reassembles_in_order_with_usage(void **state)
{
	(void)state;
	struct embed_whole a, b;
	embed_whole_init(&a, 3, 2);
	embed_whole_init(&b, 1, 1);
	unsigned est_a0[2] = {2, 2}, est_b[1] = {4}, est_a1[1] = {1};
	struct embed_part pa0 = {&a, 0, 2, est_a0}, pb = {&b, 0, 1, est_b}, pa1 = {&a, 2, 1, est_a1};
	struct embed_part *call1[2] = {&pa0, &pb}, *call2[1] = {&pa1};
	const char *ans1 = "{\"object\":\"list\",\"model\":\"m\",\"data\":["
			   "{\"object\":\"embedding\",\"index\":2,\"embedding\":[0.3]},"
			   "{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1]},"
			   "{\"object\":\"embedding\",\"index\":1,\"embedding\":[0.2]}],"
			   "\"usage\":{\"prompt_tokens\":8,\"total_tokens\":8}}";
	assert_int_equal(embed_take_answer(ans1, strlen(ans1), call1, 2, 7), CP_OK);
	assert_int_equal(a.parts_left, 1);
	assert_int_equal(b.parts_left, 0);
	assert_int_equal(a.prompt_tokens, 4); /* 8 shared by estimates 4 : 4 */
	assert_int_equal(b.prompt_tokens, 4);
	assert_false(b.exact); /* shared a call: estimated */
	assert_int_equal(b.batch_id, 7);
	assert_int_equal(b.batch_size, 3);
	const char *ans2 = "{\"object\":\"list\",\"model\":\"m\",\"data\":["
			   "{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.4]}],"
			   "\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}";
	assert_int_equal(embed_take_answer(ans2, strlen(ans2), call2, 1, 8), CP_OK);
	assert_int_equal(a.parts_left, 0);
	assert_int_equal(a.prompt_tokens, 9);
	cJSON *r = reply_json(&a);
	char buf[200];
	assert_string_equal(item_at(r, 0, buf, sizeof buf), "{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.1]}");
	assert_string_equal(item_at(r, 1, buf, sizeof buf), "{\"object\":\"embedding\",\"index\":1,\"embedding\":[0.2]}");
	assert_string_equal(item_at(r, 2, buf, sizeof buf), "{\"object\":\"embedding\",\"index\":2,\"embedding\":[0.4]}");
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(r, "model")->valuestring, "m");
	cJSON *u = cJSON_GetObjectItemCaseSensitive(r, "usage");
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valueint, 9);
	assert_int_equal(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valueint, 9);
	cJSON_Delete(r);
	r = reply_json(&b);
	assert_string_equal(item_at(r, 0, buf, sizeof buf), "{\"object\":\"embedding\",\"index\":0,\"embedding\":[0.3]}");
	assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(r, "data")), 1);
	cJSON_Delete(r);
	embed_whole_release(&a);
	embed_whole_release(&b);
}

static void alone_is_exact(void **state)
{
	(void)state;
	struct embed_whole a;
	embed_whole_init(&a, 1, 1);
	unsigned est[1] = {1};
	struct embed_part p = {&a, 0, 1, est}, *pp[1] = {&p};
	const char *ans = "{\"data\":[{\"index\":0,\"embedding\":[1]}],\"usage\":{\"prompt_tokens\":6}}";
	assert_int_equal(embed_take_answer(ans, strlen(ans), pp, 1, 1), CP_OK);
	assert_true(a.exact);
	assert_int_equal(a.prompt_tokens, 6);
	cJSON *r = reply_json(&a);
	/* no "object" in the answer: the reply says "list" */
	assert_string_equal(cJSON_GetObjectItemCaseSensitive(r, "object")->valuestring, "list");
	cJSON_Delete(r);
	embed_whole_release(&a);
}

/* A whole whose other part failed takes no elements, but its part counts as answered; an input the
 * upstream left out is null in the reply. */
static void failed_whole_and_missing_input(void **state)
{
	(void)state;
	struct embed_whole a, b;
	embed_whole_init(&a, 1, 2);
	embed_whole_init(&b, 2, 1);
	a.failed = true;
	unsigned est[2] = {1, 1};
	struct embed_part pa = {&a, 0, 1, est}, pb = {&b, 0, 2, est}, *pp[2] = {&pa, &pb};
	/* index 1 twice (the second is dropped), index 2 missing */
	const char *ans = "{\"data\":[{\"index\":0,\"embedding\":[1]},{\"index\":1,\"embedding\":[2]},"
			  "{\"index\":1,\"embedding\":[9]}],\"usage\":{\"prompt_tokens\":3}}";
	assert_int_equal(embed_take_answer(ans, strlen(ans), pp, 2, 1), CP_OK);
	assert_null(a.items[0]);
	assert_int_equal(a.parts_left, 1);
	assert_int_equal(b.parts_left, 0);
	cJSON *r = reply_json(&b);
	char buf[100];
	assert_string_equal(item_at(r, 0, buf, sizeof buf), "{\"index\":0,\"embedding\":[2]}");
	assert_string_equal(item_at(r, 1, buf, sizeof buf), "null");
	cJSON_Delete(r);
	embed_whole_release(&a);
	embed_whole_release(&b);
}

static void answer_not_understood(void **state)
{
	(void)state;
	struct embed_whole a;
	embed_whole_init(&a, 2, 1);
	unsigned est[2] = {1, 1};
	struct embed_part p = {&a, 0, 2, est}, *pp[1] = {&p};
	const char *one = "{\"data\":[{\"index\":0,\"embedding\":[1]}],\"usage\":{\"prompt_tokens\":3}}";
	assert_int_equal(embed_take_answer(one, strlen(one), pp, 1, 1), CP_ERROR); /* one element for two */
	assert_int_equal(embed_take_answer("{\"data\":", 8, pp, 1, 1), CP_ERROR);
	assert_int_equal(embed_take_answer(NULL, 0, pp, 1, 1), CP_ERROR);
	assert_int_equal(a.parts_left, 1);
	assert_int_equal(a.prompt_tokens, 0);
	assert_null(a.items[0]);
	assert_null(a.proto);
	embed_whole_release(&a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(plan_by_count_and_tokens),
		cmocka_unit_test(apportion_adds_up),
		cmocka_unit_test(reassembles_in_order_with_usage),
		cmocka_unit_test(alone_is_exact),
		cmocka_unit_test(failed_whole_and_missing_input),
		cmocka_unit_test(answer_not_understood),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
