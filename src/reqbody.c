/* reqbody: the upstream body of a completion batch, from the canonical request bytes. */
#include "carpool/reqbody.h"

#include <string.h>

/* A JSON string, escaped as cJSON prints it: runs of plain bytes go in one copy. */
static void add_string(struct sbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef", from[] = "\"\\\b\f\n\r\t", to[] = "\"\\bfnrt";
	sbuf_add(b, "\"", 1);
	const unsigned char *p = (const unsigned char *)s, *run = p;
	for (;; p++) {
		unsigned char c = *p;
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		sbuf_add(b, run, (size_t)(p - run));
		if (!c)
			break;
		const char *k = strchr(from, c); /* c is not 0 here */
		if (k) {
			char e[2] = {'\\', to[k - from]};
			sbuf_add(b, e, 2);
		} else {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			sbuf_add(b, e, 6);
		}
		run = p + 1;
	}
	sbuf_add(b, "\"", 1);
}

/* One prompt: a string, or an array of token ids (integers: intake checked). */
static void add_prompt(struct sbuf *b, const cJSON *p)
{
	if (cJSON_IsString(p)) {
		add_string(b, p->valuestring);
		return;
	}
	sbuf_add(b, "[", 1);
	for (const cJSON *e = p->child; e; e = e->next) {
		sbuf_addll(b, (long long)e->valuedouble);
		if (e->next)
			sbuf_add(b, ",", 1);
	}
	sbuf_add(b, "]", 1);
}

/* Whether the canonical object at c can be sent as it is: intake's key is "<kind><kind>:{...}", and
 * the canonical form writes a number out of double's range as inf or nan, which is no JSON (the tree
 * prints null there). Such letters after a value's first byte, in a string or not, send the batch
 * to the tree. */
static bool splice_ok(const char *key)
{
	if (!key || strlen(key) < 5 || key[2] != ':' || key[3] != '{')
		return false;
	for (const char *p = key + 3; (p = strpbrk(p, "in")); p++)
		if ((!strncmp(p, "inf", 3) || !strncmp(p, "nan", 3)) && strchr(":,[-", p[-1]))
			return false;
	return true;
}

static const char *stream_fields(enum dialect d)
{
	switch (d) {
	case DIALECT_LLAMACPP: return "\"stream\":true";
	case DIALECT_VLLM: return "\"stream\":true,\"stream_options\":{\"include_usage\":true,\"continuous_usage_stats\":true}";
	default: return "\"stream\":true,\"stream_options\":{\"include_usage\":true}";
	}
}

char *reqbody_completion(const struct intake_req *const *reqs, unsigned n, enum dialect d)
{
	const char *key = n ? reqs[0]->key : NULL;
	if (!splice_ok(key))
		return reqbody_completion_json(reqs, n, d);
	const char *canon = key + 3;
	size_t clen = strlen(canon);
	struct sbuf b = {0};
	sbuf_reserve(&b, clen + 128);
	sbuf_add(&b, "{\"prompt\":[", 11);
	bool first = true;
	for (unsigned i = 0; i < n; i++)
		for (const cJSON *p = reqs[i]->prompts->child; p; p = p->next) {
			if (!first)
				sbuf_add(&b, ",", 1);
			first = false;
			add_prompt(&b, p);
		}
	sbuf_add(&b, "],", 2);
	sbuf_adds(&b, stream_fields(d));
	/* the canonical object's members, after its '{' */
	if (clen > 2)
		sbuf_add(&b, ",", 1);
	sbuf_add(&b, canon + 1, clen - 1);
	return b.data;
}

char *reqbody_completion_json(const struct intake_req *const *reqs, unsigned n, enum dialect d)
{
	cJSON *body = cJSON_Duplicate(reqs[0]->body, 1);
	cJSON *prompts = cJSON_CreateArray();
	for (unsigned i = 0; i < n; i++)
		for (const cJSON *p = reqs[i]->prompts->child; p; p = p->next)
			cJSON_AddItemToArray(prompts, cJSON_Duplicate(p, 1));
	json_set(body, "prompt", prompts);
	cJSON_DeleteItemFromObjectCaseSensitive(body, "stream");
	cJSON_AddTrueToObject(body, "stream");
	cJSON_DeleteItemFromObjectCaseSensitive(body, "stream_options");
	if (d != DIALECT_LLAMACPP) {
		cJSON *so = cJSON_AddObjectToObject(body, "stream_options");
		cJSON_AddTrueToObject(so, "include_usage");
		if (d == DIALECT_VLLM)
			cJSON_AddTrueToObject(so, "continuous_usage_stats");
	}
	char *s = cJSON_PrintUnformatted(body);
	cJSON_Delete(body);
	return s;
}
