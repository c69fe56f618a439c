/* The splitter's byte-level fast path against its full parse: the same generated upstream events
 * (random shapes, field orders, escapes, whitespace, usage placement) through both must give every
 * member the same events, as JSON values, and the same bookkeeping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "carpool/jscan.h"
#include "carpool/splitter.h"

static uint32_t rng = 12345;
static uint32_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 17;
	rng ^= rng << 5;
	return rng;
}

static const char *const texts[] = {" hello", "", " \\\"quoted\\\"", " line\\nbreak", " caf\\u00e9", " \xc3\xa9t\xc3\xa9",
				    " {braces} [and] ,commas,", " back\\\\slash"};

/* How a call lays its events out: the choice's member order and where usage goes (-1: drawn per
 * event); a real upstream keeps one layout for a whole call, so its events share their bytes up to
 * the first choice (the splitter's template). perturb: this event differs in one byte there. */
struct shape {
	int choice, top;
	bool perturb;
};

/* One event for upstream index idx, in a random but valid shape. */
static void make_event(char *buf, size_t cap, enum dialect d, unsigned idx, bool finish, int tokens_so_far,
		       struct shape sh)
{
	const char *ws = next() % 4 == 0 ? " " : "";
	const char *text = texts[next() % (sizeof texts / sizeof texts[0])];
	char choice[512];
	const char *fr = finish ? (next() % 2 ? "\"stop\"" : "\"length\"") : "null";
	unsigned cl = next() % 3, tl = next() % 3;
	switch (sh.choice >= 0 ? (unsigned)sh.choice : cl) {
	case 0:
		snprintf(choice, sizeof choice, "{\"index\":%s%u,\"text\":%s\"%s\",\"logprobs\":null,\"finish_reason\":%s%s}", ws,
			 idx, ws, text, fr, d == DIALECT_VLLM ? ",\"stop_reason\":null" : "");
		break;
	case 1:
		snprintf(choice, sizeof choice, "{\"text\":\"%s\",%s\"finish_reason\":%s,\"index\":%u,\"extra\":{\"a\":[1,{\"b\":\"]}\"}]}}",
			 text, ws, fr, idx);
		break;
	default:
		snprintf(choice, sizeof choice, "{ \"finish_reason\" : %s , \"index\" : %u , \"text\" : \"%s\" }", fr, idx, text);
	}
	char usage[128] = "";
	if (d == DIALECT_VLLM && next() % 4)
		snprintf(usage, sizeof usage, "\"usage\":{\"prompt_tokens\":%u,\"completion_tokens\":%d,\"total_tokens\":%d}",
			 3 + idx, tokens_so_far, 3 + (int)idx + tokens_so_far);
	else if (d == DIALECT_LLAMACPP && finish)
		snprintf(usage, sizeof usage, "\"usage\":{\"completion_tokens\":%d,\"prompt_tokens\":4,\"total_tokens\":%d}",
			 tokens_so_far, tokens_so_far + 4);
	else if (next() % 2) /* a usage of null: vLLM's without continuous usage */
		snprintf(usage, sizeof usage, "\"usage\":null");
	/* one byte of the part before the choice changed: another id, or a blank after the '{' */
	const char *id = sh.perturb && next() % 2 ? "cmpl-2" : "cmpl-1", *lead = sh.perturb && id[5] == '1' ? " " : "";
	if (sh.top >= 0)
		tl = (unsigned)sh.top;
	if (!usage[0] && tl != 1) /* usage first or in the middle: without it, the choices come first */
		tl = 3;
	switch (tl) {
	case 0: /* usage first */
		snprintf(buf, cap, "{%s%s,\"id\":\"%s\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[%s]}",
			 lead, usage, id, choice);
		break;
	case 1: /* usage last */
		snprintf(buf, cap, "{%s\"id\":\"%s\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[%s]%s%s%s}",
			 lead, id, choice, usage[0] ? "," : "", ws, usage);
		break;
	case 2: /* usage in the middle */
		snprintf(buf, cap, "{%s\"id\":\"%s\",%s,\"choices\":[%s],\"model\":\"m\",\"system_fingerprint\":\"fp\"}", lead,
			 id, usage, choice);
		break;
	default:
		snprintf(buf, cap, "{%s\"choices\":[%s],\"created\":1,\"model\":\"m\",\"object\":\"text_completion\",\"id\":\"%s\"}",
			 sh.perturb ? " " : "", choice, id);
	}
}

struct side {
	struct split sp;
	struct split_member m[4];
	struct split_member *pm[4];
	unsigned est[4][4];
	struct sbuf log[4]; /* everything each member received */
};

static void side_init(struct side *s, enum dialect d, unsigned n, bool fast)
{
	memset(s, 0, sizeof *s);
	unsigned np[4] = {1, 2, 1, 3};
	for (int i = 0; i < 4; i++) {
		s->m[i].nprompts = np[i];
		s->m[i].stream = true;
		s->m[i].include_usage = i % 2 == 0;
		for (int k = 0; k < 4; k++)
			s->est[i][k] = 2;
		s->m[i].prompt_tokens_est = s->est[i];
		s->pm[i] = &s->m[i];
	}
	split_init(&s->sp, d, n, s->pm, 4);
	s->sp.no_fast = !fast;
}

static void side_take(struct side *s)
{
	for (int i = 0; i < 4; i++) {
		sbuf_add(&s->log[i], s->m[i].out.data ? s->m[i].out.data : "", s->m[i].out.len);
		sbuf_reset(&s->m[i].out);
		s->m[i].dirty = false;
	}
}

static void side_free(struct side *s)
{
	for (int i = 0; i < 4; i++) {
		split_member_free(&s->m[i]);
		sbuf_free(&s->log[i]);
	}
	split_free(&s->sp);
}

/* Compares two SSE logs event by event, as JSON values. */
static void same_events(const char *a, const char *b)
{
	static const char promise[] = "the fast path gives each member the same events as the full parse "
				      "(every event of its choices, index remapped)";
	char *x = strdup(a ? a : ""), *y = strdup(b ? b : "");
	char *sx = NULL, *sy = NULL;
	char *ex = strtok_r(x, "\n", &sx), *ey = strtok_r(y, "\n", &sy);
	while (ex || ey) {
		if (!ex || !ey)
			fail_msg("%s: the %s path has an extra event: %s", promise, ex ? "fast" : "full", ex ? ex : ey);
		assert_true(!strncmp(ex, "data: ", 6) && !strncmp(ey, "data: ", 6));
		if (!strcmp(ex + 6, "[DONE]") || !strcmp(ey + 6, "[DONE]")) {
			if (strcmp(ex, ey))
				fail_msg("%s: events differ:\n fast: %s\n full: %s", promise, ex, ey);
		} else {
			cJSON *jx = cJSON_Parse(ex + 6), *jy = cJSON_Parse(ey + 6);
			if (!jx || !jy || !cJSON_Compare(jx, jy, 1))
				fail_msg("%s: events differ:\n fast: %s\n full: %s", promise, ex, ey);
			cJSON_Delete(jx);
			cJSON_Delete(jy);
		}
		ex = strtok_r(NULL, "\n", &sx);
		ey = strtok_r(NULL, "\n", &sy);
	}
	free(x);
	free(y);
}

/* The byte path without the template against the full parse, as run() compares f and s. */
static void same_sides(const struct side *g, const struct side *s)
{
	for (int i = 0; i < 4; i++) {
		same_events(g->log[i].data, s->log[i].data);
		assert_int_equal(g->m[i].done, s->m[i].done);
		assert_int_equal(g->m[i].finished, s->m[i].finished);
		for (unsigned c = 0; c < g->m[i].nchoices; c++) {
			assert_int_equal(g->m[i].ntokens[c], s->m[i].ntokens[c]);
			assert_int_equal(g->m[i].cu_completion[c], s->m[i].cu_completion[c]);
		}
		for (unsigned p = 0; p < g->m[i].nprompts; p++)
			assert_int_equal(g->m[i].cu_prompt[p], s->m[i].cu_prompt[p]);
	}
}

/* Rounds of whole calls through three splitters: the byte path with its template and layout (f),
 * without them (g), and the full parse (s). Three rounds in four keep one layout for the call, with one event in
 * eight changed by a byte before its choice; the fourth draws every event's layout. */
static void run(enum dialect d, unsigned n, unsigned rounds)
{
	unsigned long_choices = 0; /* choices of more than 5 events */
	unsigned long tpl_events = 0, fast_events = 0, perturbed = 0, skel_events = 0;
	for (unsigned r = 0; r < rounds; r++) {
		struct side f, g, s;
		side_init(&f, d, n, true);
		side_init(&g, d, n, true);
		g.sp.no_tpl = true;
		side_init(&s, d, n, false);
		struct shape sh = {-1, -1, false};
		if (r % 4) {
			sh.choice = (int)(next() % 3);
			sh.top = (int)(next() % 4);
		}
		unsigned nchoices = f.sp.nslots * n;
		int *left = calloc(nchoices, sizeof *left), *done = calloc(nchoices, sizeof *done);
		/* 1 to 9 events a choice: a long choice crosses every small count a bug could hide behind */
		for (unsigned c = 0; c < nchoices; c++)
			left[c] = 1 + (int)(next() % 9);
		char ev[2048];
		/* the first event sets the prototype on each (full parse) */
		unsigned remaining = nchoices;
		while (remaining) {
			unsigned c = next() % nchoices;
			if (!left[c])
				continue;
			left[c]--;
			done[c]++;
			bool fin = left[c] == 0;
			sh.perturb = next() % 8 == 0;
			perturbed += sh.perturb;
			make_event(ev, sizeof ev, d, c, fin, done[c], sh);
			int rc = split_event(&s.sp, ev, strlen(ev), false);
			assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), rc);
			assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), rc);
			side_take(&f);
			side_take(&g);
			side_take(&s);
			if (fin)
				remaining--;
		}
		split_event(&f.sp, "[DONE]", 6, false);
		split_event(&g.sp, "[DONE]", 6, false);
		split_event(&s.sp, "[DONE]", 6, false);
		side_take(&f);
		side_take(&g);
		side_take(&s);
		assert_int_equal(g.sp.tpl_events, 0);
		tpl_events += f.sp.tpl_events;
		skel_events += f.sp.skel_events;
		/* a layout with usage after the choices (or none) has a template from its second event */
		if ((sh.top == 1 || sh.top == 3) && !f.sp.tpl_events)
			fail_msg("round %u: layout %d/%d, %lu byte-path events, none matched the template", r, sh.choice,
				 sh.top, f.sp.fast_events);
		fast_events += f.sp.fast_events;
		assert_true(f.sp.fast_events > 0 || nchoices == 1);
		for (unsigned c = 0; c < nchoices; c++)
			long_choices += done[c] > 5;
		for (int i = 0; i < 4; i++) {
			same_events(f.log[i].data, s.log[i].data);
			assert_int_equal(f.m[i].done, s.m[i].done);
			assert_int_equal(f.m[i].finished, s.m[i].finished);
			for (unsigned c = 0; c < f.m[i].nchoices; c++) {
				assert_int_equal(f.m[i].ntokens[c], s.m[i].ntokens[c]);
				assert_int_equal(f.m[i].cu_completion[c], s.m[i].cu_completion[c]);
			}
		}
		same_sides(&g, &s);
		free(left);
		free(done);
		side_free(&f);
		side_free(&g);
		side_free(&s);
	}
	assert_true(long_choices >= rounds);
	/* the template serves most of the byte path's events, and some events missed it by a byte */
	if (tpl_events * 4 < fast_events || skel_events * 8 < fast_events || perturbed < rounds)
		fail_msg("template events %lu (layout %lu) of %lu byte-path events, %lu perturbed", tpl_events, skel_events,
			 fast_events, perturbed);
}

static void test_vllm(void **state)
{
	(void)state;
	run(DIALECT_VLLM, 1, 300);
	run(DIALECT_VLLM, 2, 200);
}

static void test_openai(void **state)
{
	(void)state;
	run(DIALECT_OPENAI, 1, 300);
	run(DIALECT_OPENAI, 3, 100);
}

static void test_llamacpp(void **state)
{
	(void)state;
	run(DIALECT_LLAMACPP, 1, 300);
}

/* The template and the layout are the byte path's shortcuts, so with them and without them the byte
 * path must agree byte for byte: an event that differs from the learned one in any one byte,
 * whatever the byte, gives the same outcome and the same output both ways; one that differs before
 * its choice never matches the template, and one that differs in a value only matches the layout. */
static void test_template_one_byte(void **state)
{
	(void)state;
	static const char *const evs[] = {
		"{\"id\":\"cmpl-7\",\"object\":\"text_completion\",\"created\":17,\"model\":\"m\",\"choices\":[{\"index\":%u,"
		"\"text\":\" a\",\"logprobs\":null,\"finish_reason\":null,\"stop_reason\":null}],\"usage\":{\"prompt_tokens\":3,"
		"\"completion_tokens\":%u,\"total_tokens\":9}}",
		"{ \"choices\" : [ {\"text\":\"b\",\"index\":%u,\"finish_reason\":null} ] ,\"created\":1,\"usage\":null,\"x\":%u}",
	};
	static const char subst[] = "X\"{}[],: 1\\n\x01\t";
	unsigned matched = 0, skels = 0;
	for (unsigned e = 0; e < 2; e++) {
		for (enum dialect d = DIALECT_OPENAI; d <= DIALECT_VLLM; d++) {
			struct side f, g;
			side_init(&f, d, 1, true);
			side_init(&g, d, 1, true);
			g.sp.no_tpl = true;
			char ev[512];
			/* the first event sets the prototype, the second the template */
			for (unsigned k = 0; k < 2; k++) {
				snprintf(ev, sizeof ev, evs[e], k, k);
				assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), CP_OK);
				assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), CP_OK);
			}
			size_t plen = strchr(strchr(ev, '['), '{') + 1 - ev;
			assert_int_equal(f.sp.tpl.len, plen);
			unsigned long before = f.sp.tpl_events;
			snprintf(ev, sizeof ev, evs[e], 5u, 2u);
			assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), CP_OK);
			assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), CP_OK);
			assert_int_equal(f.sp.tpl_events, before + 1);
			unsigned long skel = f.sp.skel_events;
			/* other values (the second is a usage figure in the first event, not in the other) */
			snprintf(ev, sizeof ev, evs[e], 6u, e == 0 ? 7u : 2u);
			assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), CP_OK);
			assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), CP_OK);
			assert_int_equal(f.sp.skel_events, skel + 1);
			size_t elen = strlen(ev);
			for (size_t i = 0; i < elen; i++)
				for (const char *c = subst; *c; c++) {
					snprintf(ev, sizeof ev, evs[e], (unsigned)(i % 7), 2u);
					if (ev[i] == *c)
						continue;
					/* the event unchanged, twice: the template and the layout are its own again */
					for (int k = 0; k < 2; k++) {
						assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), CP_OK);
						assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), CP_OK);
					}
					side_take(&f);
					side_take(&g);
					ev[i] = *c;
					before = f.sp.tpl_events;
					skel = f.sp.skel_events;
					int rf = split_event(&f.sp, ev, strlen(ev), false);
					int rg = split_event(&g.sp, ev, strlen(ev), false);
					assert_int_equal(rf, rg);
					if (i < plen)
						matched += f.sp.tpl_events != before;
					else
						skels += f.sp.skel_events != skel;
					for (int m = 0; m < 4; m++) {
						assert_int_equal(f.m[m].out.len, g.m[m].out.len);
						if (f.m[m].out.len && memcmp(f.m[m].out.data, g.m[m].out.data, f.m[m].out.len))
							fail_msg("template and byte path differ on %s", ev);
					}
					side_take(&f);
					side_take(&g);
				}
			/* the template's bytes, then an error after the choices: the upstream's error, not a chunk */
			snprintf(ev, sizeof ev, evs[e], 1u, 3u);
			snprintf(strrchr(ev, '}'), 64, ",\"error\":{\"message\":\"boom\",\"code\":500}}");
			assert_int_equal(split_event(&f.sp, ev, strlen(ev), false), CP_OK);
			assert_int_equal(split_event(&g.sp, ev, strlen(ev), false), CP_OK);
			for (int m = 0; m < 4; m++) {
				assert_true(f.m[m].done && g.m[m].done);
				assert_int_equal(f.m[m].out.len, g.m[m].out.len);
			}
			side_take(&f);
			side_take(&g);
			side_free(&f);
			side_free(&g);
		}
	}
	assert_int_equal(matched, 0); /* a changed byte never matches; the template is relearned */
	assert_true(skels > 0);	      /* a digit for a digit, a letter in the text */
}

/* The call's usage (an event without choices) on the byte path: a member alone in its call, streamed
 * (the usage event passed on as it is) or not (the body's usage is the upstream's), gets the same as
 * from the full parse; a usage that is no JSON object is the full parse's to refuse. */
static void test_usage_chunk(void **state)
{
	(void)state;
	static const char *const usage[] = {
		"{\"id\":\"c\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":7,"
		"\"completion_tokens\":3,\"total_tokens\":10}}",
		"{ \"usage\" : { \"completion_tokens\" : 5 , \"prompt_tokens\" : 2 } , \"choices\" : [ ] }",
		"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,}}",
		"{\"choices\":[],\"usage\":{\"prompt_tokens\":1}} x",
	};
	for (int stream = 0; stream < 2; stream++)
		for (enum dialect d = DIALECT_OPENAI; d <= DIALECT_VLLM; d++)
			for (size_t u = 0; u < sizeof usage / sizeof usage[0]; u++) {
				struct split sp[2];
				struct split_member m[2] = {{0}};
				struct split_member *pm[2] = {&m[0], &m[1]};
				unsigned est = 2;
				int rc[2];
				for (int k = 0; k < 2; k++) { /* k = 0: the byte path; 1: the full parse */
					m[k].nprompts = 1;
					m[k].stream = stream;
					m[k].include_usage = true;
					m[k].prompt_tokens_est = &est;
					split_init(&sp[k], d, 1, &pm[k], 1);
					sp[k].no_fast = k;
					const char *evs[] = {
						"{\"id\":\"c\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
						"\"text\":\"a\",\"finish_reason\":null}]}",
						"{\"id\":\"c\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,"
						"\"text\":\"b\",\"finish_reason\":\"stop\"}]}",
						usage[u], "[DONE]"};
					for (int e = 0; e < 4; e++) {
						int r = split_event(&sp[k], evs[e], strlen(evs[e]), false);
						if (e == 2)
							rc[k] = r;
					}
				}
				assert_int_equal(rc[0], rc[1]);
				if (!stream) /* the chunks are a body's: only a well-formed usage took the byte path */
					assert_int_equal(sp[0].fast_events, u < 2);
				if (stream) {
					assert_int_equal(m[0].out.len, m[1].out.len);
					assert_memory_equal(m[0].out.data, m[1].out.data, m[0].out.len);
				} else {
					cJSON *a = cJSON_Parse(m[0].out.data), *b = cJSON_Parse(m[1].out.data);
					assert_true(a && b && cJSON_Compare(a, b, 1));
					cJSON_Delete(a);
					cJSON_Delete(b);
				}
				for (int k = 0; k < 2; k++) {
					split_member_free(&m[k]);
					split_free(&sp[k]);
				}
			}
}

static void test_jscan(void **state)
{
	(void)state;
	const char *j = "{ \"a\" : [1, {\"b\": \"x]}\\\"\"}], \"usage\":{\"p\":3}, \"c\":\"d\" }";
	const char *ks, *vs, *ve;
	assert_true(jscan_member(j, j + strlen(j), "usage", &ks, &vs, &ve));
	assert_int_equal(ve - vs, 7);
	assert_true(jscan_member(j, j + strlen(j), "c", &ks, &vs, &ve));
	assert_int_equal(*vs, '"');
	assert_false(jscan_member(j, j + strlen(j), "b", &ks, &vs, &ve)); /* not top level */
	const char *bad = "{\"a\":[1,2}";
	assert_false(jscan_member(bad, bad + strlen(bad), "z", &ks, &vs, &ve));
	unsigned long n;
	assert_true(jscan_uint("42", "42" + 2, &n));
	assert_int_equal(n, 42);
	assert_false(jscan_uint("-1", "-1" + 2, &n));
	assert_false(jscan_uint("1.5", "1.5" + 3, &n));
	/* truncated events at every length never crash and never match past the end */
	const char *ev = "{\"choices\":[{\"index\":3,\"text\":\"a\\\"b\",\"finish_reason\":null}],\"usage\":{\"prompt_tokens\":1}}";
	for (size_t l = 0; l < strlen(ev); l++) {
		char *cut = strndup(ev, l);
		jscan_member(cut, cut + l, "usage", &ks, &vs, &ve);
		free(cut);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_jscan),
		cmocka_unit_test(test_template_one_byte),
		cmocka_unit_test(test_usage_chunk),
		cmocka_unit_test(test_vllm),
		cmocka_unit_test(test_openai),
		cmocka_unit_test(test_llamacpp),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
