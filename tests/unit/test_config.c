/* Unit tests for src/config.c: YAML -> struct config, defaults, and file:line:column errors. */
#include <glob.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "carpool/common.h"
#include "carpool/config.h"

static struct config cfg; /* large: keep it off the stack */
static char err[1024];

static int load(const char *yaml)
{
	err[0] = 0;
	return config_load_string("test.yaml", yaml, strlen(yaml), &cfg, err, sizeof err);
}

/* The load must fail with an error that starts with want (e.g. "test.yaml:7:20:") and mentions
 * what (NULL: anything). */
static void load_fails(const char *yaml, const char *want, const char *what)
{
	int rc = load(yaml);
	if (rc != CP_ERROR)
		fail_msg("accepted:\n%s", yaml);
	if (strncmp(err, want, strlen(want)) != 0)
		fail_msg("error \"%s\" does not start with \"%s\"", err, want);
	if (what && !strstr(err, what))
		fail_msg("error \"%s\" does not mention \"%s\"", err, what);
}

#define MIN_OK "listen:\n  - address: 127.0.0.1:8080\nupstreams:\n  - url: http://127.0.0.1:8000\n"

static const char full_yaml[] =
	"# a full config\n"						/* 1 */
	"listen:\n"							/* 2 */
	"  - address: 127.0.0.1:8080\n"					/* 3 */
	"  - address: \"[::1]:9090\"\n"					/* 4 */
	"  - address: unix:/run/carpool.sock\n"				/* 5 */
	"    mode: \"0600\"\n"						/* 6 */
	"  - address: 0.0.0.0:8443\n"					/* 7 */
	"    tls: { cert: /etc/c.pem, key: /etc/k.pem }\n"		/* 8 */
	"upstreams:\n"							/* 9 */
	"  - url: https://api.example.com/openai\n"				/* 10 */
	"    dialect: vllm\n"						/* 11 */
	"    api_key_env: UPSTREAM_API_KEY\n"				/* 12 */
	"    max_inflight: 16\n"					/* 13 */
	"    rate_limit_rpm: 600\n"					/* 14 */
	"    weight: 3\n"						/* 15 */
	"    models: [\"llama\", \"qwen-*\"]\n"				/* 16 */
	"    max_inputs_per_call: 32\n"					/* 17 */
	"    tls: { verify: false, ca_file: /etc/ssl/ca.pem }\n"	/* 18 */
	"  - url: http://10.0.0.2:8000\n"				/* 19 */
	"    dialect: llamacpp\n"					/* 20 */
	"batching:\n"							/* 21 */
	"  policy: fixed\n"						/* 22 */
	"  max_wait_ms: 25\n"						/* 23 */
	"  max_batch_size: 128\n"					/* 24 */
	"auth:\n"							/* 25 */
	"  keys: [sk-one, \"sk-two\"]\n"				/* 26 */
	"  keys_file: /etc/carpool/keys\n"				/* 27 */
	"limits: { max_body_bytes: 1048576, max_header_bytes: 8192, max_clients: 500, max_queue: 2000,"
	" max_client_buffer: 65536 }\n"					/* 28 */
	"timeouts: { connect_ms: 1000, first_byte_ms: 30000, idle_ms: 5000, client_idle_ms: 7000 }\n" /* 29 */
	"log: { level: debug, access: stdout }\n";			/* 30 */

static void test_full_config(void **state)
{
	(void)state;
	if (load(full_yaml) != CP_OK)
		fail_msg("%s", err);
	assert_string_equal(cfg.path, "test.yaml");
	assert_int_equal(cfg.nlisten, 4);
	assert_string_equal(cfg.listen[0].address, "127.0.0.1:8080");
	assert_string_equal(cfg.listen[0].mode, "0660");
	assert_string_equal(cfg.listen[0].tls.cert, "");
	assert_string_equal(cfg.listen[1].address, "[::1]:9090");
	assert_string_equal(cfg.listen[2].address, "unix:/run/carpool.sock");
	assert_string_equal(cfg.listen[2].mode, "0600");
	assert_string_equal(cfg.listen[3].tls.cert, "/etc/c.pem");
	assert_string_equal(cfg.listen[3].tls.key, "/etc/k.pem");

	assert_int_equal(cfg.nupstreams, 2);
	struct cfg_upstream *u = &cfg.upstreams[0];
	assert_string_equal(u->url, "https://api.example.com/openai");
	assert_int_equal(u->dialect, DIALECT_VLLM);
	assert_string_equal(u->api_key_env, "UPSTREAM_API_KEY");
	assert_int_equal(u->max_inflight, 16);
	assert_int_equal(u->rate_limit_rpm, 600);
	assert_int_equal(u->weight, 3);
	assert_int_equal(u->nmodels, 2);
	assert_string_equal(u->models[0], "llama");
	assert_string_equal(u->models[1], "qwen-*");
	assert_int_equal(u->max_inputs_per_call, 32);
	assert_false(u->tls.verify);
	assert_string_equal(u->tls.ca_file, "/etc/ssl/ca.pem");
	/* the second upstream gets the defaults, not the first one's values */
	u = &cfg.upstreams[1];
	assert_string_equal(u->url, "http://10.0.0.2:8000");
	assert_int_equal(u->dialect, DIALECT_LLAMACPP);
	assert_int_equal(u->max_inflight, 0);
	assert_int_equal(u->max_sequences, 0);
	assert_int_equal(u->load_poll_ms, 500);
	assert_int_equal(u->weight, 1);
	assert_int_equal(u->nmodels, 1);
	assert_string_equal(u->models[0], "*");
	assert_true(u->tls.verify);
	assert_string_equal(u->api_key_env, "");

	assert_int_equal(cfg.batching.policy, POLICY_FIXED);
	assert_int_equal(cfg.batching.max_wait_ms, 25);
	assert_int_equal(cfg.batching.max_batch_size, 128);
	assert_int_equal(cfg.auth.nkeys, 2);
	assert_string_equal(cfg.auth.keys[0], "sk-one");
	assert_string_equal(cfg.auth.keys[1], "sk-two");
	assert_string_equal(cfg.auth.keys_file, "/etc/carpool/keys");
	assert_int_equal(cfg.limits.max_body_bytes, 1048576);
	assert_int_equal(cfg.limits.max_header_bytes, 8192);
	assert_int_equal(cfg.limits.max_clients, 500);
	assert_int_equal(cfg.limits.max_queue, 2000);
	assert_int_equal(cfg.limits.max_client_buffer, 65536);
	assert_int_equal(cfg.timeouts.connect_ms, 1000);
	assert_int_equal(cfg.timeouts.first_byte_ms, 30000);
	assert_int_equal(cfg.timeouts.idle_ms, 5000);
	assert_int_equal(cfg.timeouts.client_idle_ms, 7000);
	assert_int_equal(cfg.log.level, LOG_DEBUG);
	assert_string_equal(cfg.log.access, "stdout");
}

static void test_defaults(void **state)
{
	(void)state;
	if (load(MIN_OK) != CP_OK)
		fail_msg("%s", err);
	assert_int_equal(cfg.nlisten, 1);
	assert_string_equal(cfg.listen[0].mode, "0660");
	assert_int_equal(cfg.nupstreams, 1);
	struct cfg_upstream *u = &cfg.upstreams[0];
	assert_int_equal(u->dialect, DIALECT_AUTO);
	assert_int_equal(u->max_inflight, 0); /* no cap on calls: room is counted in sequences */
	assert_int_equal(u->max_sequences, 0);
	assert_int_equal(u->rate_limit_rpm, 0);
	assert_int_equal(u->weight, 1);
	assert_int_equal(u->nmodels, 1);
	assert_string_equal(u->models[0], "*");
	assert_int_equal(u->max_inputs_per_call, 2048);
	assert_true(u->tls.verify);
	assert_string_equal(u->tls.ca_file, "");
	assert_int_equal(cfg.batching.policy, POLICY_ADAPTIVE);
	assert_int_equal(cfg.batching.max_wait_ms, 10);
	assert_int_equal(cfg.batching.max_batch_size, 64);
	assert_int_equal(cfg.batching.queue, QUEUE_SHARED);
	assert_int_equal(cfg.auth.nkeys, 0);
	assert_string_equal(cfg.auth.keys_file, "");
	assert_int_equal(cfg.limits.max_body_bytes, 4194304);
	assert_int_equal(cfg.limits.max_clients, 10000);
	assert_int_equal(cfg.limits.max_queue, 10000);
	assert_int_equal(cfg.timeouts.connect_ms, 2000);
	assert_int_equal(cfg.timeouts.first_byte_ms, 120000);
	assert_int_equal(cfg.timeouts.idle_ms, 60000);
	assert_int_equal(cfg.log.level, LOG_INFO);
	assert_int_equal(cfg.io_uring, IO_URING_AUTO);
}

/* io_uring: auto | on | off (on and off unquoted are the words, not YAML 1.1 booleans) */
static void test_io_uring(void **state)
{
	(void)state;
	static const struct {
		const char *text;
		long want;
	} ok[] = {{"auto", IO_URING_AUTO}, {"on", IO_URING_ON}, {"off", IO_URING_OFF}, {"\"off\"", IO_URING_OFF}};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		char yaml[256];
		snprintf(yaml, sizeof yaml, MIN_OK "io_uring: %s\n", ok[i].text);
		if (load(yaml) != CP_OK)
			fail_msg("io_uring: %s: %s", ok[i].text, err);
		assert_int_equal(cfg.io_uring, ok[i].want);
	}
	load_fails(MIN_OK "io_uring: yes\n", "test.yaml:5:11:", "io_uring");
	load_fails(MIN_OK "io_uring: true\n", "test.yaml:5:11:", "auto, on, off");
	load_fails(MIN_OK "io_uring: [on]\n", "test.yaml:5:11:", NULL);
}

static void test_partial_section_keeps_other_defaults(void **state)
{
	(void)state;
	if (load(MIN_OK "batching:\n  max_wait_ms: 0\nlimits:\n  max_queue: 5\n") != CP_OK)
		fail_msg("%s", err);
	assert_int_equal(cfg.batching.max_wait_ms, 0);
	assert_int_equal(cfg.batching.max_batch_size, 64);
	assert_int_equal(cfg.batching.policy, POLICY_ADAPTIVE);
	assert_int_equal(cfg.limits.max_queue, 5);
	assert_int_equal(cfg.limits.max_body_bytes, 4194304);
}

static void test_reload_resets(void **state)
{
	(void)state;
	/* a second load into the same struct starts from the defaults again */
	assert_int_equal(load(full_yaml), CP_OK);
	if (load(MIN_OK) != CP_OK)
		fail_msg("%s", err);
	assert_int_equal(cfg.nlisten, 1);
	assert_int_equal(cfg.auth.nkeys, 0);
	assert_int_equal(cfg.batching.max_wait_ms, 10);
}

static void test_unknown_key(void **state)
{
	(void)state;
	load_fails(MIN_OK "bogus: 1\n", "test.yaml:5:1:", "bogus");
	load_fails(MIN_OK "batching:\n  max_wait_ms: 5\n  max_wiat_ms: 6\n", "test.yaml:7:3:", "max_wiat_ms");
	load_fails("listen:\n  - address: a:1\n    port: 80\nupstreams:\n  - url: http://x\n", "test.yaml:3:5:", "port");
	load_fails(MIN_OK "    tls: { verify: true, cafile: x }\n", "test.yaml:5:26:", "cafile");
}

static void test_duplicate_key(void **state)
{
	(void)state;
	load_fails(MIN_OK "batching:\n  max_wait_ms: 5\n  max_wait_ms: 6\n", "test.yaml:7:3:", "duplicate");
	load_fails(MIN_OK "listen:\n  - address: b:2\n", "test.yaml:5:1:", "duplicate");
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: http://x\n    weight: 2\n    weight: 3\n",
		   "test.yaml:6:5:", "duplicate");
}

static void test_wrong_type(void **state)
{
	(void)state;
	/* string for an integer: the value's position */
	load_fails(MIN_OK "batching:\n  max_wait_ms: soon\n", "test.yaml:6:16:", "max_wait_ms");
	load_fails(MIN_OK "batching:\n  max_wait_ms: 10ms\n", "test.yaml:6:16:", "max_wait_ms");
	load_fails(MIN_OK "batching:\n  max_wait_ms: 1.5\n", "test.yaml:6:16:", "max_wait_ms");
	load_fails(MIN_OK "batching:\n  max_wait_ms: \"\"\n", "test.yaml:6:16:", "max_wait_ms");
	/* a list for a scalar */
	load_fails(MIN_OK "batching:\n  max_wait_ms: [1, 2]\n", "test.yaml:6:16:", "max_wait_ms");
	load_fails(MIN_OK "log:\n  level:\n    - info\n", "test.yaml:7:5:", "level");
	/* a scalar for a section, a list and a string list */
	load_fails(MIN_OK "batching: 5\n", "test.yaml:5:11:", "batching");
	load_fails("listen: 127.0.0.1:8080\nupstreams:\n  - url: http://x\n", "test.yaml:1:9:", "listen");
	load_fails(MIN_OK "    models: llama\n", "test.yaml:5:13:", "models");
	load_fails(MIN_OK "    models: [a, [b]]\n", "test.yaml:5:17:", "models");
	/* a bool that is not one */
	load_fails(MIN_OK "    tls: { verify: maybe }\n", "test.yaml:5:20:", "verify");
	/* the top level must be a mapping */
	load_fails("- a\n- b\n", "test.yaml:1:1:", NULL);
}

static void test_out_of_range(void **state)
{
	(void)state;
	load_fails(MIN_OK "batching:\n  max_batch_size: 0\n", "test.yaml:6:19:", "max_batch_size");
	load_fails(MIN_OK "batching:\n  max_batch_size: 4097\n", "test.yaml:6:19:", "max_batch_size");
	load_fails(MIN_OK "batching:\n  max_wait_ms: -1\n", "test.yaml:6:16:", "max_wait_ms");
	load_fails(MIN_OK "    max_inflight: -1\n", "test.yaml:5:19:", "max_inflight");
	load_fails(MIN_OK "    max_sequences: -1\n", "test.yaml:5:20:", "max_sequences");
	load_fails(MIN_OK "limits: { max_body_bytes: 10 }\n", "test.yaml:5:27:", "max_body_bytes");
	load_fails(MIN_OK "batching:\n  max_wait_ms: 99999999999999999999999\n", "test.yaml:6:16:", "max_wait_ms");
	/* the bounds themselves are fine */
	assert_int_equal(load(MIN_OK "batching:\n  max_batch_size: 4096\n  max_wait_ms: 60000\n"), CP_OK);
	assert_int_equal(cfg.batching.max_batch_size, 4096);
}

static void test_bad_enum(void **state)
{
	(void)state;
	load_fails(MIN_OK "batching:\n  policy: greedy\n", "test.yaml:6:11:", "greedy");
	load_fails(MIN_OK "    dialect: tgi-ish\n", "test.yaml:5:14:", "dialect");
	load_fails(MIN_OK "log: { level: loud }\n", "test.yaml:5:15:", "level");
	/* the message lists the choices */
	load_fails(MIN_OK "batching:\n  policy: greedy\n", "test.yaml:6:11:", "adaptive");
	load_fails(MIN_OK "batching:\n  queue: global\n", "test.yaml:6:10:", "per_worker");
	/* and the other choice loads */
	if (load(MIN_OK "batching:\n  queue: per_worker\n") != CP_OK)
		fail_msg("%s", err);
	assert_int_equal(cfg.batching.queue, QUEUE_PER_WORKER);
}

static void test_missing_listen_upstreams(void **state)
{
	(void)state;
	load_fails("upstreams:\n  - url: http://x\n", "test.yaml:1:1:", "listen");
	/* an empty list: the error points at the list itself */
	load_fails("listen: []\nupstreams:\n  - url: http://x\n", "test.yaml:1:9:", "listen");
	load_fails("listen:\n  - address: a:1\n", "test.yaml:1:1:", "upstreams");
	load_fails("listen:\n  - address: a:1\nupstreams: []\n", "test.yaml:3:12:", "upstreams");
	/* an empty file */
	load_fails("", "test.yaml:1:1:", NULL);
	load_fails("# only a comment\n", "test.yaml:", NULL);
}

/* Semantic errors found after parsing must still point at the offending node, not at the top of
 * the file (STYLE.md: every error names file:line:column). */
static void test_bad_url_scheme(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: http://ok\n  - url: ftp://x/y\n", "test.yaml:", "url");
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: http://ok\n  - url: ftp://x/y\n", "test.yaml:5:10:",
		   "url");
}

/* carpool adds /v1/... itself: a url whose path ends in a /v1 segment is refused at the url */
static void test_url_ending_in_v1(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: http://h:1/v1\n", "test.yaml:4:10:",
		   "write \"http://h:1\"");
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: https://h/p/v1//\n", "test.yaml:4:10:",
		   "write \"https://h/p\"");
	assert_int_equal(load("listen:\n  - address: a:1\nupstreams:\n  - url: http://h:1/v10\n"), CP_OK);
	assert_int_equal(load("listen:\n  - address: a:1\nupstreams:\n  - url: http://h:1/xv1\n"), CP_OK);
	assert_int_equal(load("listen:\n  - address: a:1\nupstreams:\n  - url: http://h:1/\n"), CP_OK);
}

/* a listener without an address: the listener's mapping */
static void test_pos_listen_no_address(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: a:1\n  - mode: \"0600\"\nupstreams:\n  - url: http://x\n", "test.yaml:3:5:",
		   "address");
}

/* a mode that is not octal: the mode's value */
static void test_pos_listen_bad_mode(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: unix:/s\n    mode: \"0999\"\nupstreams:\n  - url: http://x\n",
		   "test.yaml:3:11:", "mode");
}

/* tls with a cert but no key: the tls mapping */
static void test_pos_listen_tls_half(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: a:1\n    tls: { cert: /c }\nupstreams:\n  - url: http://x\n",
		   "test.yaml:3:10:", "tls");
}

/* models: [] : the empty list */
static void test_pos_models_empty(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: a:1\nupstreams:\n  - url: http://x\n    models: []\n", "test.yaml:5:13:",
		   "models");
}

/* --check-config must catch a listen address that can never bind (it is only parsed at bind time
 * otherwise): the address value's position. */
static void test_bad_listen_address(void **state)
{
	(void)state;
	load_fails("listen:\n  - address: 127.0.0.1\nupstreams:\n  - url: http://x\n", "test.yaml:2:14:", "address");
	load_fails("listen:\n  - address: \"unix:\"\nupstreams:\n  - url: http://x\n", "test.yaml:2:14:", "address");
}

static void test_yaml_syntax_error(void **state)
{
	(void)state;
	/* an unclosed flow mapping */
	int rc = load(MIN_OK "batching: { max_wait_ms: 5\n");
	assert_int_equal(rc, CP_ERROR);
	assert_int_equal(strncmp(err, "test.yaml:", 10), 0);
	unsigned line = 0, col = 0;
	assert_int_equal(sscanf(err, "test.yaml:%u:%u:", &line, &col), 2);
	assert_true(line >= 5 && line <= 6);
	assert_true(col >= 1);

	/* a bad indentation */
	rc = load("listen:\n  - address: a:1\n   mode: x\n");
	assert_int_equal(rc, CP_ERROR);
	assert_int_equal(sscanf(err, "test.yaml:%u:%u:", &line, &col), 2);
	assert_int_equal(line, 3);

	/* a tab where YAML forbids it */
	rc = load("listen:\n\t- address: a:1\n");
	assert_int_equal(rc, CP_ERROR);
	assert_int_equal(sscanf(err, "test.yaml:%u:%u:", &line, &col), 2);
	assert_int_equal(line, 2);
}

static void test_too_many_items(void **state)
{
	(void)state;
	char yaml[4096] = "listen:\n  - address: a:1\nupstreams:\n  - url: http://x\n    models: [";
	for (int i = 0; i < CFG_MAX_MODELS + 1; i++)
		sprintf(yaml + strlen(yaml), "%sm%d", i ? ", " : "", i);
	strcat(yaml, "]\n");
	load_fails(yaml, "test.yaml:5:", "models");
}

static void test_string_too_long(void **state)
{
	(void)state;
	char yaml[2048];
	char longv[700];
	memset(longv, 'x', sizeof longv - 1);
	longv[sizeof longv - 1] = 0;
	snprintf(yaml, sizeof yaml, "listen:\n  - address: a:1\nupstreams:\n  - url: http://%s\n", longv);
	load_fails(yaml, "test.yaml:4:10:", "url");
}

static void test_config_load_file(void **state)
{
	(void)state;
	char path[] = "/tmp/carpool-test-config-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *yaml = MIN_OK "batching:\n  max_wait_ms: 7\n";
	assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
	close(fd);
	err[0] = 0;
	if (config_load(path, &cfg, err, sizeof err) != CP_OK)
		fail_msg("%s", err);
	assert_int_equal(cfg.batching.max_wait_ms, 7);
	assert_string_equal(cfg.path, path);

	/* an error names the file */
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(MIN_OK "batching:\n  max_wait_ms: x\n", f);
	fclose(f);
	assert_int_equal(config_load(path, &cfg, err, sizeof err), CP_ERROR);
	char want[128];
	snprintf(want, sizeof want, "%s:6:16:", path);
	assert_int_equal(strncmp(err, want, strlen(want)), 0);
	unlink(path);

	/* a missing file */
	assert_int_equal(config_load("/nonexistent/carpool.yaml", &cfg, err, sizeof err), CP_ERROR);
	assert_non_null(strstr(err, "/nonexistent/carpool.yaml"));
}

/* Every shipped config must load (tests run from the repository root). */
static void test_shipped_configs(void **state)
{
	(void)state;
	glob_t g;
	int rc = glob("configs/*.yaml", 0, NULL, &g);
	if (rc == GLOB_NOMATCH)
		return; /* none shipped yet */
	assert_int_equal(rc, 0);
	for (size_t i = 0; i < g.gl_pathc; i++) {
		err[0] = 0;
		if (config_load(g.gl_pathv[i], &cfg, err, sizeof err) != CP_OK) {
			char msg[1200];
			snprintf(msg, sizeof msg, "%s", err);
			globfree(&g);
			fail_msg("%s", msg);
		}
		assert_true(cfg.nlisten >= 1);
		assert_true(cfg.nupstreams >= 1);
	}
	globfree(&g);
}

static void test_dialect_name(void **state)
{
	(void)state;
	assert_string_equal(dialect_name(DIALECT_AUTO), "auto");
	assert_string_equal(dialect_name(DIALECT_OPENAI), "openai");
	assert_string_equal(dialect_name(DIALECT_VLLM), "vllm");
	assert_string_equal(dialect_name(DIALECT_LLAMACPP), "llamacpp");
	assert_string_equal(dialect_name((enum dialect)42), "?");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_config),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_partial_section_keeps_other_defaults),
		cmocka_unit_test(test_reload_resets),
		cmocka_unit_test(test_unknown_key),
		cmocka_unit_test(test_duplicate_key),
		cmocka_unit_test(test_wrong_type),
		cmocka_unit_test(test_out_of_range),
		cmocka_unit_test(test_bad_enum),
		cmocka_unit_test(test_io_uring),
		cmocka_unit_test(test_missing_listen_upstreams),
		cmocka_unit_test(test_bad_url_scheme),
		cmocka_unit_test(test_url_ending_in_v1),
		cmocka_unit_test(test_pos_listen_no_address),
		cmocka_unit_test(test_pos_listen_bad_mode),
		cmocka_unit_test(test_pos_listen_tls_half),
		cmocka_unit_test(test_pos_models_empty),
		cmocka_unit_test(test_bad_listen_address),
		cmocka_unit_test(test_yaml_syntax_error),
		cmocka_unit_test(test_too_many_items),
		cmocka_unit_test(test_string_too_long),
		cmocka_unit_test(test_config_load_file),
		cmocka_unit_test(test_shipped_configs),
		cmocka_unit_test(test_dialect_name),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
