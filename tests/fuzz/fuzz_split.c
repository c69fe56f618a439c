/* Fuzz target: one upstream event through the splitter's byte-level fast path and through its full
 * parse; when the full parse accepts the event, both must give each member the same JSON. The byte
 * path with its per-call template and without it must agree byte for byte, whatever the event.
 * data[0]: the dialect (% 3); from 0xe0 on, the event starts with the template's bytes, so that the
 * fuzzer works on what follows them. */
#include "carpool/splitter.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct side {
	struct split sp;
	struct split_member m[3];
	struct split_member *pm[3];
	unsigned est[3][2];
};

#define TPL "{\"id\":\"x\",\"object\":\"text_completion\",\"created\":1,\"model\":\"m\",\"choices\":[{"

static void side_init(struct side *s, enum dialect d, bool fast, bool tpl)
{
	memset(s, 0, sizeof *s);
	for (int i = 0; i < 3; i++) {
		s->m[i].nprompts = i == 1 ? 2 : 1;
		s->m[i].stream = true;
		s->m[i].include_usage = i == 0;
		s->est[i][0] = s->est[i][1] = 3;
		s->m[i].prompt_tokens_est = s->est[i];
		s->pm[i] = &s->m[i];
	}
	split_init(&s->sp, d, 1, s->pm, 3);
	s->sp.no_fast = !fast;
	s->sp.no_tpl = !tpl;
	static const char first[] = TPL "\"index\":3,\"text\":\"\",\"finish_reason\":null}]}";
	static const char second[] = TPL "\"index\":0,\"text\":\"\",\"finish_reason\":null}]}";
	split_event(&s->sp, first, sizeof first - 1, false);   /* sets the prototype on each */
	split_event(&s->sp, second, sizeof second - 1, false); /* and the template where it is used */
	for (int i = 0; i < 3; i++)
		sbuf_reset(&s->m[i].out);
}

static void side_free(struct side *s)
{
	for (int i = 0; i < 3; i++)
		split_member_free(&s->m[i]);
	split_free(&s->sp);
}

/* Both outputs, event by event, must be equal as JSON (or both "[DONE]"). */
static void same(const struct sbuf *x, const struct sbuf *y)
{
	char *a = x->len ? strndup(x->data, x->len) : strdup(""), *b = y->len ? strndup(y->data, y->len) : strdup("");
	char *sa = NULL, *sb = NULL;
	char *la = strtok_r(a, "\n", &sa), *lb = strtok_r(b, "\n", &sb);
	while (la || lb) {
		if (!la || !lb)
			abort();
		if (strncmp(la, "data: ", 6) || strncmp(lb, "data: ", 6))
			abort();
		cJSON *ja = cJSON_Parse(la + 6), *jb = cJSON_Parse(lb + 6);
		bool ok = !strcmp(la, lb) || (ja && jb && cJSON_Compare(ja, jb, 1));
		if (!ok && ja && jb) { /* a key twice: cJSON_Compare finds its first value only; both keep the order */
			char *pa = cJSON_PrintUnformatted(ja), *pb = cJSON_PrintUnformatted(jb);
			ok = pa && pb && !strcmp(pa, pb);
			free(pa);
			free(pb);
		}
		cJSON_Delete(ja);
		cJSON_Delete(jb);
		if (!ok)
			abort();
		la = strtok_r(NULL, "\n", &sa);
		lb = strtok_r(NULL, "\n", &sb);
	}
	free(a);
	free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum dialect d = data[0] % 3 == 0 ? DIALECT_VLLM : data[0] % 3 == 1 ? DIALECT_OPENAI : DIALECT_LLAMACPP;
	bool with_tpl = data[0] >= 0xe0;
	size_t len = size - 1 + (with_tpl ? sizeof TPL - 1 : 0);
	char *ev = malloc(len ? len : 1);
	if (with_tpl)
		memcpy(ev, TPL, sizeof TPL - 1);
	memcpy(ev + len - (size - 1), data + 1, size - 1);
	struct side f, g, s;
	side_init(&f, d, true, true);
	side_init(&g, d, true, false);
	side_init(&s, d, false, false);
	cJSON *check = cJSON_ParseWithLength(ev, len);
	int rs = split_event(&s.sp, ev, len, false);
	int rf = split_event(&f.sp, ev, len, false);
	if (split_event(&g.sp, ev, len, false) != rf)
		abort();
	for (int i = 0; i < 3; i++)
		if (f.m[i].out.len != g.m[i].out.len || (f.m[i].out.len && memcmp(f.m[i].out.data, g.m[i].out.data, f.m[i].out.len)))
			abort();
	if (check && rs == CP_OK)
		for (int i = 0; i < 3; i++)
			same(&f.m[i].out, &s.m[i].out);
	cJSON_Delete(check);
	free(ev);
	side_free(&f);
	side_free(&g);
	side_free(&s);
	return 0;
}
