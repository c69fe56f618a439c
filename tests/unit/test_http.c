/* Unit tests for the HTTP helpers of src/common.c: header lines and the Keep-Alive header. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/common.h"

static void test_header_split(void **state)
{
	(void)state;
	char a[] = "Keep-Alive: \t timeout=5, max=100 \t";
	assert_string_equal(http_header_split(a), "timeout=5, max=100");
	assert_string_equal(a, "Keep-Alive");
	char b[] = "X:";
	assert_string_equal(http_header_split(b), "");
	char c[] = ": no name";
	assert_null(http_header_split(c));
	char d[] = "no colon";
	assert_null(http_header_split(d));
}

/* timeout_s and max after parsing v from -1 / -1 */
static void ka(const char *v, long want_timeout, long want_max)
{
	long t = -1, m = -1;
	http_keep_alive(v, &t, &m);
	assert_int_equal(t, want_timeout);
	assert_int_equal(m, want_max);
}

static void test_keep_alive(void **state)
{
	(void)state;
	ka("timeout=5, max=100", 5, 100);		 /* llama.cpp b4748, Apache */
	ka("max=99,timeout=15", 15, 99);		 /* any order, no blank */
	ka("TIMEOUT=3", 3, -1);				 /* case, one parameter only */
	ka("  ,, timeout=2 ,\tmax=1", 2, 1);		 /* stray separators and blanks */
	ka("timeout=-4, max=-1", 0, 0);			 /* negative: none */
	ka("timeout=abc, max=", 0, 0);			 /* not a number: none */
	ka("timeouts=9, maximum=9, foo=1", -1, -1);	 /* other parameters are ignored */
	ka("", -1, -1);
	ka("foo, timeout=7", 7, -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_split),
		cmocka_unit_test(test_keep_alive),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
