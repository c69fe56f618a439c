/* intake: parse and validate OpenAI requests; compute the canonical batch key. */
#include "carpool/intake.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_N 128

static int refuse(struct intake_error *err, int status, const char *param, const char *fmt, const char *arg)
	__attribute__((format(printf, 4, 0)));

static int refuse(struct intake_error *err, int status, const char *param, const char *fmt, const char *arg)
{
	err->status = status;
	err->type = "invalid_request_error";
	err->param = param;
	err->code = NULL;
	snprintf(err->message, sizeof err->message, fmt, arg ? arg : "");
	return CP_ERROR;
}

static bool is_int(const cJSON *v)
{
	return cJSON_IsNumber(v) && v->valuedouble == floor(v->valuedouble) && fabs(v->valuedouble) < 9.0e15;
}

static bool is_token_array(const cJSON *a)
{
	if (!cJSON_IsArray(a) || !a->child)
		return false;
	for (const cJSON *e = a->child; e; e = e->next)
		if (!is_int(e))
			return false;
	return true;
}

/* Fills r->prompts / nprompts / kind from body[field] ("prompt" or "input"). */
static int take_prompts(struct intake_req *r, const char *field, cJSON *prompt, struct intake_error *err)
{
	char msg[200];
	r->prompts = cJSON_CreateArray();
	if (cJSON_IsString(prompt)) {
		r->kind = PROMPT_TEXT;
		r->prompt_bytes = strlen(prompt->valuestring);
		cJSON_AddItemToArray(r->prompts, cJSON_Duplicate(prompt, 1));
		r->nprompts = 1;
		return CP_OK;
	}
	if (!cJSON_IsArray(prompt)) {
		snprintf(msg, sizeof msg,
			 "'%s' must be a string, an array of strings, an array of token ids or an array of token-id arrays",
			 field);
		return refuse(err, 400, field, "%s", msg);
	}
	if (!prompt->child) {
		snprintf(msg, sizeof msg, "'%s' must not be an empty array", field);
		return refuse(err, 400, field, "%s", msg);
	}
	if (is_token_array(prompt)) {
		r->kind = PROMPT_TOKENS;
		cJSON_AddItemToArray(r->prompts, cJSON_Duplicate(prompt, 1));
		r->nprompts = 1;
		return CP_OK;
	}
	bool strings = cJSON_IsString(prompt->child);
	r->kind = strings ? PROMPT_TEXT : PROMPT_TOKENS;
	for (cJSON *e = prompt->child; e; e = e->next) {
		if (strings ? !cJSON_IsString(e) : !is_token_array(e)) {
			snprintf(msg, sizeof msg,
				 "'%s' array elements must be all strings or all non-empty arrays of integer token ids",
				 field);
			return refuse(err, 400, field, "%s", msg);
		}
		if (strings)
			r->prompt_bytes += strlen(e->valuestring);
		cJSON_AddItemToArray(r->prompts, cJSON_Duplicate(e, 1));
		r->nprompts++;
	}
	return CP_OK;
}

/* A body with a key twice is refused: parsers disagree on which copy wins, and carpool must
 * see exactly what the upstream will. Returns the duplicated key or NULL. */
static const char *duplicate_key(const cJSON *obj)
{
	for (const cJSON *a = obj->child; a; a = a->next)
		for (const cJSON *b = a->next; b; b = b->next)
			if (a->string && b->string && !strcmp(a->string, b->string))
				return a->string;
	return NULL;
}

static int check_object(const cJSON *body, struct intake_error *err)
{
	if (!cJSON_IsObject(body))
		return refuse(err, 400, NULL, "%s", "The request body must be a JSON object.");
	const char *dup = duplicate_key(body);
	if (dup) {
		char msg[160];
		snprintf(msg, sizeof msg, "The request body has the key '%.100s' more than once.", dup);
		return refuse(err, 400, NULL, "%s", msg);
	}
	return CP_OK;
}

static void canon_object(struct sbuf *b, const cJSON *v, const char *const *skip);

/* The batch key: every field but `without`, in canonical form, after a kind prefix. */
static void make_key(struct intake_req *r, char prefix, const char *const *without)
{
	struct sbuf b = {0};
	char head[3] = {prefix, r->kind == PROMPT_TEXT ? 't' : 'i', ':'};
	sbuf_add(&b, head, 3);
	canon_object(&b, r->body, without); /* the body is an object (check_object) */
	r->key = b.data;
}

/* Whether s[0..n) is well-formed UTF-8 (RFC 3629: no overlong form, no surrogate, nothing past
 * U+10FFFF), as JSON text must be (RFC 8259 section 8.1). */
static bool utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned char c = s[i];
		if (c < 0x80) {
			i++;
			continue;
		}
		size_t k = c >= 0xc2 && c <= 0xdf ? 1 : c >= 0xe0 && c <= 0xef ? 2 : c >= 0xf0 && c <= 0xf4 ? 3 : 0;
		if (!k || n - i <= k)
			return false;
		unsigned char lo = 0x80, hi = 0xbf; /* the second byte's range */
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
		else if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
		if (s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t j = 2; j <= k; j++)
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
		i += k + 1;
	}
	return true;
}

/* The body as JSON: one value, UTF-8, nothing but blanks after it (what OpenAI accepts); NULL
 * otherwise. */
static cJSON *parse_body(const char *body, size_t len)
{
	if (!utf8_valid((const unsigned char *)body, len))
		return NULL;
	const char *end = NULL;
	cJSON *j = cJSON_ParseWithLengthOpts(body, len, &end, false);
	if (!j)
		return NULL;
	while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n'))
		end++;
	if (end != body + len) {
		cJSON_Delete(j);
		return NULL;
	}
	return j;
}

int intake_parse_embedding(const char *body, size_t len, struct intake_req *r, struct intake_error *err)
{
	static const char *const without[] = {"input", NULL};
	memset(r, 0, sizeof *r);
	r->n = 1;
	r->body = parse_body(body, len);
	if (!r->body)
		return refuse(err, 400, NULL, "%s", "We could not parse the JSON body of your request.");
	if (check_object(r->body, err) != CP_OK)
		goto fail;
	cJSON *input = cJSON_GetObjectItemCaseSensitive(r->body, "input");
	if (!input) {
		refuse(err, 400, "input", "%s", "Missing required parameter: 'input'.");
		goto fail;
	}
	if (take_prompts(r, "input", input, err) != CP_OK)
		goto fail;
	cJSON *model = cJSON_GetObjectItemCaseSensitive(r->body, "model");
	if (model && !cJSON_IsString(model)) {
		refuse(err, 400, "model", "%s", "'model' must be a string");
		goto fail;
	}
	cJSON *fmt = cJSON_GetObjectItemCaseSensitive(r->body, "encoding_format");
	if (fmt && !cJSON_IsNull(fmt) &&
	    (!cJSON_IsString(fmt) || (strcmp(fmt->valuestring, "float") && strcmp(fmt->valuestring, "base64")))) {
		refuse(err, 400, "encoding_format", "%s", "'encoding_format' must be \"float\" or \"base64\"");
		goto fail;
	}
	cJSON *dims = cJSON_GetObjectItemCaseSensitive(r->body, "dimensions");
	if (dims && !cJSON_IsNull(dims) && (!is_int(dims) || dims->valuedouble < 1)) {
		refuse(err, 400, "dimensions", "%s", "'dimensions' must be a positive integer");
		goto fail;
	}
	make_key(r, 'e', without);
	return CP_OK;
fail:
	intake_free(r);
	return CP_ERROR;
}

int intake_parse_completion(const char *body, size_t len, struct intake_req *r, struct intake_error *err)
{
	memset(r, 0, sizeof *r);
	r->n = 1;
	r->body = parse_body(body, len);
	if (!r->body)
		return refuse(err, 400, NULL, "We could not parse the JSON body of your request.%s", NULL);
	if (check_object(r->body, err) != CP_OK)
		goto fail;
	cJSON *prompt = cJSON_GetObjectItemCaseSensitive(r->body, "prompt");
	if (!prompt) {
		refuse(err, 400, "prompt", "Missing required parameter: 'prompt'.%s", NULL);
		goto fail;
	}
	if (take_prompts(r, "prompt", prompt, err) != CP_OK)
		goto fail;
	cJSON *n = cJSON_GetObjectItemCaseSensitive(r->body, "n");
	if (n && !cJSON_IsNull(n)) {
		if (!is_int(n) || n->valuedouble < 1 || n->valuedouble > MAX_N) {
			refuse(err, 400, "n", "'n' must be an integer from 1 to 128%s", NULL);
			goto fail;
		}
		r->n = (unsigned)n->valuedouble;
	}
	cJSON *model = cJSON_GetObjectItemCaseSensitive(r->body, "model");
	if (model && !cJSON_IsString(model)) {
		refuse(err, 400, "model", "'model' must be a string%s", NULL);
		goto fail;
	}
	cJSON *stream = cJSON_GetObjectItemCaseSensitive(r->body, "stream");
	if (stream && !cJSON_IsNull(stream)) {
		if (!cJSON_IsBool(stream)) {
			refuse(err, 400, "stream", "'stream' must be a boolean%s", NULL);
			goto fail;
		}
		r->stream = cJSON_IsTrue(stream);
	}
	cJSON *so = cJSON_GetObjectItemCaseSensitive(r->body, "stream_options");
	if (so && !cJSON_IsNull(so)) {
		if (!cJSON_IsObject(so)) {
			refuse(err, 400, "stream_options", "'stream_options' must be an object%s", NULL);
			goto fail;
		}
		cJSON *iu = cJSON_GetObjectItemCaseSensitive(so, "include_usage");
		if (iu && !cJSON_IsNull(iu) && !cJSON_IsBool(iu)) {
			refuse(err, 400, "stream_options.include_usage", "'include_usage' must be a boolean%s", NULL);
			goto fail;
		}
		r->include_usage = cJSON_IsTrue(iu);
	}
	/* The key: every field but the prompt and the delivery fields, in canonical form. */
	static const char *const without[] = {"prompt", "stream", "stream_options", NULL};
	make_key(r, 'c', without);
	return CP_OK;
fail:
	intake_free(r);
	return CP_ERROR;
}

void intake_free(struct intake_req *r)
{
	cJSON_Delete(r->body);
	cJSON_Delete(r->prompts);
	free(r->key);
	memset(r, 0, sizeof *r);
}

static void canon_string(struct sbuf *b, const char *s)
{
	sbuf_add(b, "\"", 1);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': sbuf_add(b, "\\\"", 2); break;
		case '\\': sbuf_add(b, "\\\\", 2); break;
		default:
			if (*p < 0x20)
				sbuf_printf(b, "\\u%04x", *p);
			else
				sbuf_add(b, p, 1);
		}
	}
	sbuf_add(b, "\"", 1);
}

static int cmp_keys(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
	return strcmp(x->string, y->string);
}

static void canon(struct sbuf *b, const cJSON *v);

static bool listed(const char *key, const char *const *list)
{
	for (int i = 0; list && list[i]; i++)
		if (!strcmp(key, list[i]))
			return true;
	return false;
}

/* An object, keys sorted; members named in skip (NULL: none) are left out. */
static void canon_object(struct sbuf *b, const cJSON *v, const char *const *skip)
{
	size_t n = 0;
	for (const cJSON *e = v->child; e; e = e->next)
		n++;
	const cJSON **items = xcalloc(n ? n : 1, sizeof *items);
	n = 0;
	for (const cJSON *e = v->child; e; e = e->next)
		if (!listed(e->string, skip))
			items[n++] = e;
	qsort(items, n, sizeof *items, cmp_keys);
	sbuf_add(b, "{", 1);
	for (size_t i = 0; i < n; i++) {
		canon_string(b, items[i]->string);
		sbuf_add(b, ":", 1);
		canon(b, items[i]);
		if (i + 1 < n)
			sbuf_add(b, ",", 1);
	}
	sbuf_add(b, "}", 1);
	free(items);
}

static void canon(struct sbuf *b, const cJSON *v)
{
	if (cJSON_IsNull(v)) {
		sbuf_adds(b, "null");
	} else if (cJSON_IsFalse(v)) {
		sbuf_adds(b, "false");
	} else if (cJSON_IsTrue(v)) {
		sbuf_adds(b, "true");
	} else if (cJSON_IsNumber(v)) {
		double d = v->valuedouble;
		if (d == floor(d) && fabs(d) < 1e15)
			sbuf_addll(b, (long long)d);
		else
			sbuf_printf(b, "%.17g", d);
	} else if (cJSON_IsString(v)) {
		canon_string(b, v->valuestring);
	} else if (cJSON_IsArray(v)) {
		sbuf_add(b, "[", 1);
		for (const cJSON *e = v->child; e; e = e->next) {
			canon(b, e);
			if (e->next)
				sbuf_add(b, ",", 1);
		}
		sbuf_add(b, "]", 1);
	} else if (cJSON_IsObject(v)) {
		canon_object(b, v, NULL);
	} else {
		sbuf_adds(b, "null");
	}
}

char *intake_canonical(const cJSON *v)
{
	struct sbuf b = {0};
	canon(&b, v);
	return b.data;
}
