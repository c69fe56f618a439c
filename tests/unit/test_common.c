/* Unit tests for src/common.c: the token bucket of client keys' and upstreams' request rates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "carpool/common.h"

#define S 1000000ull /* one second in now_us() units */

/* A key's bucket (rpm 600, 10 s): a burst of 100 at once, then one every 0.1 s. */
static void test_full_burst_then_rate(void **state)
{
	(void)state;
	struct rate_bucket b;
	uint64_t t = 1000 * S;
	rate_bucket_init(&b, 600, 10, true, t);
	for (int i = 0; i < 100; i++) {
		assert_true(rate_bucket_wait(&b, t) == 0);
		rate_bucket_spend(&b, t);
	}
	double w = rate_bucket_wait(&b, t);
	assert_true(w > 0.099 && w < 0.101);
	assert_true(rate_bucket_wait(&b, t + S / 10) == 0);
	/* idle for a minute: no more than the burst */
	rate_bucket_spend(&b, t + S / 10);
	t += 70 * S;
	for (int i = 0; i < 100; i++)
		rate_bucket_spend(&b, t);
	assert_true(rate_bucket_wait(&b, t) > 0);
}

/* An upstream's bucket starts with one request and holds 6 s; a slow rate holds at least one. */
static void test_start_with_one_and_floor(void **state)
{
	(void)state;
	struct rate_bucket b;
	uint64_t t = 5 * S;
	rate_bucket_init(&b, 600, 6, false, t);
	assert_true(rate_bucket_wait(&b, t) == 0);
	rate_bucket_spend(&b, t);
	assert_true(rate_bucket_wait(&b, t) > 0);
	t += 600 * S;
	for (int i = 0; i < 60; i++)
		rate_bucket_spend(&b, t);
	assert_true(rate_bucket_wait(&b, t) > 0); /* 6 s of 10/s */

	rate_bucket_init(&b, 2, 10, true, t); /* 2 a minute: one at a time, every 30 s */
	rate_bucket_spend(&b, t);
	double w = rate_bucket_wait(&b, t);
	assert_true(w > 29.99 && w < 30.01);
	/* spending past empty (calls not refused, like health checks) pushes the next one back */
	rate_bucket_spend(&b, t);
	w = rate_bucket_wait(&b, t);
	assert_true(w > 59.99 && w < 60.01);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_burst_then_rate),
		cmocka_unit_test(test_start_with_one_and_floor),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
