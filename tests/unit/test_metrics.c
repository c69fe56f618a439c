/* Unit tests for src/metrics.c: the Prometheus text of a scrape, rendered from the declared lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "carpool/metrics.h"

static struct metrics w0, w1;
static struct metrics *const two[] = {&w0, &w1};

static struct metrics_view view(void)
{
	memset(&w0, 0, sizeof w0);
	memset(&w1, 0, sizeof w1);
	struct metrics_view v = {.nups = 2, .workers = two, .nworkers = 2,
				 .causes = {"connect", "first_byte_timeout", "idle_timeout", "broken"}};
	v.ups[0].url = "http://a:1";
	v.ups[1].url = "http://b:2";
	v.ups[0].upstream_load_signal_age_seconds = -1;
	v.ups[1].upstream_load_signal_age_seconds = 0.25;
	return v;
}

static char *render(const struct metrics_view *v)
{
	struct sbuf b = {0};
	metrics_render(&b, v);
	sbuf_add(&b, "", 1);
	return b.data;
}

/* The line that starts with prefix (a whole line), or NULL. */
static const char *line_of(const char *text, const char *prefix)
{
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (!strncmp(p, prefix, strlen(prefix)))
			return p;
	return NULL;
}

static void assert_line(const char *text, const char *line)
{
	const char *at = line_of(text, line);
	if (!at || (at[strlen(line)] != '\n' && at[strlen(line)] != 0))
		fail_msg("no line \"%s\" in:\n%s", line, text);
}

/* Every declared family has its HELP and TYPE lines once, of the declared type, in list order. */
static void test_every_family_once_in_order(void **state)
{
	(void)state;
	struct metrics_view v = view();
	char *text = render(&v);
	const char *last = text;
	char want[512];
#define CHECK(name, type)                                                                          \
	snprintf(want, sizeof want, "# HELP carpool_%s ", #name);                                    \
	assert_non_null(strstr(text, want));                                                         \
	assert_null(strstr(strstr(text, want) + 1, want));                                           \
	assert_true(strstr(text, want) >= last);                                                     \
	last = strstr(text, want);                                                                   \
	snprintf(want, sizeof want, "# TYPE carpool_%s %s", #name, type);                            \
	assert_line(text, want);
#define BATCH(name, member, type, help) CHECK(name, #type)
#define NAMED(name, help) CHECK(name, strstr(#name, "_total") ? "counter" : "gauge")
#define FIGURE(name, type, ctype, fmt, help) CHECK(name, #type)
#define SUM(name, member, help) CHECK(name, "counter")
#define HIST(name, help, bounds, scale) CHECK(name, "histogram")
	METRICS_BATCH(BATCH)
	METRICS_ROUTING_COUNTERS(NAMED)
	METRICS_UPSTREAM(FIGURE, SUM)
	CHECK(upstream_failures_by_cause_total, "counter")
	METRICS_COUNTERS(NAMED)
	CHECK(open_streams, "gauge")
	METRICS_HISTOGRAMS(HIST)
	CHECK(http_requests_total, "counter")
	free(text);
}

/* Figures land on their own lines: the batcher's as given, each worker's summed, each upstream's
 * labelled with its url, in the declared format. */
static void test_values(void **state)
{
	(void)state;
	struct metrics_view v = view();
	v.batch.retries_total = 7;
	v.batch.requests_active = 3;
	w0.passthrough_total = 2;
	w1.passthrough_total = 3;
	w0.config_reload_failures_total = 1;
	w0.streams_started_total = 5;
	w0.streams_ended_total = 4;
	w1.streams_started_total = 2;
	w1.streams_ended_total = 2;
	v.ups[1].upstream_failures_total = 9;
	v.ups[1].upstream_sequence_capacity = 256;
	v.ups[0].upstream_healthy = 1;
	v.ups[1].failures_by_cause[3] = 4;
	w0.requests[ROUTE_OTHER][502] = 1;
	w1.requests[ROUTE_OTHER][502] = 2;
	w1.requests[ROUTE_LOCAL][200] = 6;
	char *text = render(&v);
	assert_line(text, "carpool_retries_total 7");
	assert_line(text, "carpool_requests_active 3");
	assert_line(text, "carpool_passthrough_total 5");
	assert_line(text, "carpool_config_reload_failures_total 1");
	assert_line(text, "carpool_open_streams 1");
	assert_line(text, "carpool_upstream_failures_total{upstream=\"http://a:1\"} 0");
	assert_line(text, "carpool_upstream_failures_total{upstream=\"http://b:2\"} 9");
	assert_line(text, "carpool_upstream_sequence_capacity{upstream=\"http://b:2\"} 256");
	assert_line(text, "carpool_upstream_load_signal_age_seconds{upstream=\"http://a:1\"} -1.000");
	assert_line(text, "carpool_upstream_load_signal_age_seconds{upstream=\"http://b:2\"} 0.250");
	assert_line(text, "carpool_upstream_healthy{upstream=\"http://a:1\"} 1");
	assert_line(text, "carpool_upstream_healthy{upstream=\"http://b:2\"} 0");
	assert_line(text, "carpool_upstream_failures_by_cause_total{upstream=\"http://b:2\",cause=\"broken\"} 4");
	assert_line(text, "carpool_upstream_failures_by_cause_total{upstream=\"http://a:1\",cause=\"connect\"} 0");
	assert_line(text, "carpool_http_requests_total{route=\"other\",status=\"502\"} 3");
	assert_line(text, "carpool_http_requests_total{route=\"local\",status=\"200\"} 6");
	assert_null(strstr(text, "status=\"200\"} 0")); /* only statuses seen */
	free(text);
}

/* A whole per-upstream family, byte for byte (operators' dashboards read these names and lines). */
static void test_family_bytes(void **state)
{
	(void)state;
	struct metrics_view v = view();
	v.ups[0].upstream_resent_total = 12;
	char *text = render(&v);
	assert_non_null(strstr(text,
		"# HELP carpool_upstream_resent_total Calls sent again on a new connection because the server closed the "
		"reused one before answering (not failures).\n"
		"# TYPE carpool_upstream_resent_total counter\n"
		"carpool_upstream_resent_total{upstream=\"http://a:1\"} 12\n"
		"carpool_upstream_resent_total{upstream=\"http://b:2\"} 0\n"
		"# HELP carpool_upstream_conn_idle_closed_total "));
	assert_non_null(strstr(text, "# HELP carpool_requests_total Client completion requests accepted for batching.\n"
				     "# TYPE carpool_requests_total counter\ncarpool_requests_total 0\n"
				     "# HELP carpool_prompts_total "));
	assert_int_equal(strncmp(text, "# HELP carpool_requests_total ", 30), 0); /* first */
	free(text);
}

/* Histograms: cumulative buckets over both workers, in seconds, with +Inf, the sum and the count. */
static void test_histogram(void **state)
{
	(void)state;
	struct metrics_view v = view();
	metrics_observe_ms(&w0.queue_seconds, 3);
	metrics_observe_ms(&w1.queue_seconds, 30);
	metrics_observe_ms(&w1.queue_seconds, 500000);
	metrics_observe_count(&w0.prompts_per_call, 5);
	char *text = render(&v);
	assert_line(text, "carpool_queue_seconds_bucket{le=\"0.002\"} 0");
	assert_line(text, "carpool_queue_seconds_bucket{le=\"0.005\"} 1");
	assert_line(text, "carpool_queue_seconds_bucket{le=\"0.05\"} 2");
	assert_line(text, "carpool_queue_seconds_bucket{le=\"120\"} 2");
	assert_line(text, "carpool_queue_seconds_bucket{le=\"+Inf\"} 3");
	assert_line(text, "carpool_queue_seconds_sum 500.033");
	assert_line(text, "carpool_queue_seconds_count 3");
	assert_line(text, "carpool_prompts_per_call_bucket{le=\"4\"} 0");
	assert_line(text, "carpool_prompts_per_call_bucket{le=\"8\"} 1");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_every_family_once_in_order),
		cmocka_unit_test(test_values),
		cmocka_unit_test(test_family_bytes),
		cmocka_unit_test(test_histogram),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
