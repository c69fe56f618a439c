/* splitter: one batched upstream stream -> each client's own stream or body. */
#include "carpool/splitter.h"
#include "carpool/jscan.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The layout of a call's events after the template: the same bytes but for a few values that
 * change from event to event (the index, the text, the usage figures), learned from one event.
 * An event that has these bytes, with a plain integer or a string in each place, is that event with
 * other values: nothing in it needs a scan but the values themselves. */
enum { SK_LIT, SK_UINT, SK_STR };		     /* a piece: bytes as learned, digits, a string's inside */
enum { SK_NONE, SK_INDEX, SK_TEXT, SK_UPROMPT, SK_UCOMPL }; /* what a value is */
#define SK_MAX 16
struct split_skel {
	struct sbuf bytes; /* the pieces' learned bytes, one after another */
	unsigned n;
	struct {
		unsigned char kind, role;
		unsigned off, len; /* in bytes */
	} piece[SK_MAX];
	int cut_piece[2]; /* vLLM: the usage member removed starts and ends in these pieces (-1: none) */
	unsigned cut_off[2];
	unsigned misses; /* layouts learned since one last matched: past SK_GIVE_UP (the call's events
			  * differ in more than these values), no more are learned */
};
#define SK_GIVE_UP 8

static void skel_free(struct split *sp)
{
	if (!sp->skel)
		return;
	sbuf_free(&sp->skel->bytes);
	free(sp->skel);
	sp->skel = NULL;
}

void split_init(struct split *sp, enum dialect dialect, unsigned n, struct split_member **members,
		unsigned nmembers)
{
	memset(sp, 0, sizeof *sp);
	sp->dialect = dialect;
	sp->n = n ? n : 1;
	sp->members = members;
	sp->nmembers = nmembers;
	for (unsigned i = 0; i < nmembers; i++)
		sp->nslots += members[i]->nprompts;
	sp->slot_owner = xcalloc(sp->nslots, sizeof *sp->slot_owner);
	unsigned slot = 0;
	for (unsigned i = 0; i < nmembers; i++) {
		struct split_member *m = members[i];
		split_member_free(m);
		m->slot0 = slot;
		for (unsigned p = 0; p < m->nprompts; p++)
			sp->slot_owner[slot++] = i;
		m->nchoices = m->nprompts * sp->n;
		m->finished = 0;
		m->done = m->dirty = false;
		m->status = 200;
		m->fin = xcalloc(m->nchoices, 1);
		m->ntokens = xcalloc(m->nchoices, sizeof *m->ntokens);
		m->cu_completion = xcalloc(m->nchoices, sizeof *m->cu_completion);
		m->cu_prompt = xcalloc(m->nprompts, sizeof *m->cu_prompt);
		for (unsigned c = 0; c < m->nchoices; c++)
			m->cu_completion[c] = -1;
		for (unsigned p = 0; p < m->nprompts; p++)
			m->cu_prompt[p] = -1;
		if (!m->stream) {
			m->text = xcalloc(m->nchoices, sizeof *m->text);
			m->last = xcalloc(m->nchoices, sizeof *m->last);
			m->logprobs = xcalloc(m->nchoices, sizeof *m->logprobs);
			m->final = xcalloc(m->nprompts, sizeof *m->final);
		}
		m->usage_exact = split_usage_exact(sp);
		if (!m->gone)
			sp->remaining++;
	}
}

void split_member_free(struct split_member *m)
{
	if (m->text)
		for (unsigned c = 0; c < m->nchoices; c++)
			sbuf_free(&m->text[c]);
	if (m->last)
		for (unsigned c = 0; c < m->nchoices; c++) {
			cJSON_Delete(m->last[c]);
			cJSON_Delete(m->logprobs[c]);
		}
	if (m->final)
		for (unsigned p = 0; p < m->nprompts; p++)
			cJSON_Delete(m->final[p]);
	free(m->fin);
	free(m->ntokens);
	free(m->cu_completion);
	free(m->cu_prompt);
	free(m->text);
	free(m->last);
	free(m->logprobs);
	free(m->final);
	m->fin = NULL;
	m->ntokens = NULL;
	m->cu_completion = NULL;
	m->cu_prompt = NULL;
	m->text = NULL;
	m->last = m->logprobs = m->final = NULL;
	sbuf_free(&m->out);
}

void split_free(struct split *sp)
{
	free(sp->slot_owner);
	cJSON_Delete(sp->proto);
	sbuf_free(&sp->proto_src);
	sbuf_free(&sp->tpl);
	skel_free(sp);
	cJSON_Delete(sp->usage_total);
	sp->slot_owner = NULL;
	sp->proto = sp->usage_total = NULL;
}

bool split_usage_exact(const struct split *sp)
{
	return sp->nmembers == 1 || sp->dialect == DIALECT_LLAMACPP || sp->dialect == DIALECT_VLLM;
}

/* A member alone in an OpenAI-dialect call passes the upstream's own usage chunk through and ends
 * at the upstream's [DONE]: it is exactly what it would have got alone, and nobody else waits. */
static bool alone_passthrough(const struct split *sp)
{
	return sp->nmembers == 1 && sp->dialect != DIALECT_LLAMACPP;
}

static void emit_sse(struct split_member *m, const char *json)
{
	sbuf_adds(&m->out, "data: ");
	sbuf_adds(&m->out, json);
	sbuf_add(&m->out, "\n\n", 2);
	m->dirty = true;
}

/* Writes an event whose data may hold several lines: each line gets its own field prefix. */
static void emit_raw(struct split_member *m, const char *field, const char *data, size_t len)
{
	size_t i = 0;
	do {
		const char *nl = memchr(data + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - data) : len;
		sbuf_adds(&m->out, field);
		sbuf_adds(&m->out, ": ");
		sbuf_add(&m->out, data + i, end - i);
		sbuf_add(&m->out, "\n", 1);
		i = end + 1;
	} while (i < len);
	sbuf_add(&m->out, "\n", 1);
	m->dirty = true;
}

static void usage_of(const struct split *sp, const struct split_member *m, long *prompt, long *completion)
{
	if (sp->nmembers == 1 && sp->usage_total && sp->dialect != DIALECT_LLAMACPP) {
		cJSON *pt = cJSON_GetObjectItemCaseSensitive(sp->usage_total, "prompt_tokens");
		cJSON *ct = cJSON_GetObjectItemCaseSensitive(sp->usage_total, "completion_tokens");
		*prompt = cJSON_IsNumber(pt) ? (long)pt->valuedouble : 0;
		*completion = cJSON_IsNumber(ct) ? (long)ct->valuedouble : 0;
		return;
	}
	long p = 0, c = 0;
	for (unsigned i = 0; i < m->nprompts; i++)
		p += m->cu_prompt[i] >= 0 ? m->cu_prompt[i] : (long)(m->prompt_tokens_est ? m->prompt_tokens_est[i] : 0);
	for (unsigned i = 0; i < m->nchoices; i++)
		c += m->cu_completion[i] >= 0 ? m->cu_completion[i] : (long)m->ntokens[i];
	*prompt = p;
	*completion = c;
}

static cJSON *usage_json(const struct split *sp, const struct split_member *m)
{
	long p, c;
	usage_of(sp, m, &p, &c);
	cJSON *u = cJSON_CreateObject();
	cJSON_AddNumberToObject(u, "prompt_tokens", (double)p);
	cJSON_AddNumberToObject(u, "completion_tokens", (double)c);
	cJSON_AddNumberToObject(u, "total_tokens", (double)(p + c));
	return u;
}

/* The first event's top-level fields, parsed again from its bytes (which the full parse accepted)
 * the first time an answer needs them (a usage chunk, a non-stream body): a call whose members
 * only stream content never builds them. */
static cJSON *proto_copy(struct split *sp)
{
	if (!sp->proto && sp->proto_src.len) {
		sp->proto = cJSON_ParseWithLength(sp->proto_src.data, sp->proto_src.len);
		if (cJSON_IsObject(sp->proto)) {
			cJSON_DeleteItemFromObjectCaseSensitive(sp->proto, "choices");
			cJSON_DeleteItemFromObjectCaseSensitive(sp->proto, "usage");
			cJSON_DeleteItemFromObjectCaseSensitive(sp->proto, "timings");
		}
		sbuf_free(&sp->proto_src);
	}
	return sp->proto ? cJSON_Duplicate(sp->proto, 1) : cJSON_CreateObject();
}

/* Non-stream body in the OpenAI / vLLM shape: one object, the member's choices in index order. */
static char *assemble_openai(struct split *sp, struct split_member *m)
{
	cJSON *obj = proto_copy(sp);
	cJSON *choices = cJSON_CreateArray();
	for (unsigned c = 0; c < m->nchoices; c++) {
		cJSON *ch = m->last[c] ? cJSON_Duplicate(m->last[c], 1) : cJSON_CreateObject();
		cJSON_DeleteItemFromObjectCaseSensitive(ch, "index");
		cJSON_DeleteItemFromObjectCaseSensitive(ch, "text");
		cJSON_DeleteItemFromObjectCaseSensitive(ch, "logprobs");
		cJSON *out = cJSON_CreateObject();
		cJSON_AddNumberToObject(out, "index", c);
		cJSON_AddStringToObject(out, "text", m->text[c].data ? m->text[c].data : "");
		if (m->logprobs[c])
			cJSON_AddItemToObject(out, "logprobs", cJSON_Duplicate(m->logprobs[c], 1));
		else
			cJSON_AddNullToObject(out, "logprobs");
		if (!cJSON_GetObjectItemCaseSensitive(ch, "finish_reason"))
			cJSON_AddNullToObject(out, "finish_reason");
		for (cJSON *e = ch->child; e; e = e->next)
			cJSON_AddItemToObject(out, e->string, cJSON_Duplicate(e, 1));
		cJSON_Delete(ch);
		cJSON_AddItemToArray(choices, out);
	}
	cJSON_DeleteItemFromObjectCaseSensitive(obj, "object");
	cJSON_AddStringToObject(obj, "object", "text_completion");
	cJSON_AddItemToObject(obj, "choices", choices);
	cJSON_AddItemToObject(obj, "usage", usage_json(sp, m));
	char *s = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	return s;
}

/* Non-stream body in llama.cpp's shape: per prompt the final chunk with the whole text; one object
 * for a single prompt, an array for several. */
static char *assemble_llamacpp(struct split *sp, struct split_member *m)
{
	cJSON *arr = cJSON_CreateArray();
	for (unsigned p = 0; p < m->nprompts; p++) {
		cJSON *obj = m->final[p] ? cJSON_Duplicate(m->final[p], 1) : proto_copy(sp);
		cJSON *choices = cJSON_GetObjectItemCaseSensitive(obj, "choices");
		cJSON *ch = cJSON_IsArray(choices) ? choices->child : NULL;
		if (!ch) {
			cJSON_DeleteItemFromObjectCaseSensitive(obj, "choices");
			choices = cJSON_AddArrayToObject(obj, "choices");
			ch = cJSON_CreateObject();
			cJSON_AddItemToArray(choices, ch);
		}
		json_set(ch, "text", cJSON_CreateString(m->text[p].data ? m->text[p].data : ""));
		json_set(ch, "index", cJSON_CreateNumber(p));
		cJSON_AddItemToArray(arr, obj);
	}
	cJSON *out = arr;
	if (m->nprompts == 1) {
		out = cJSON_DetachItemFromArray(arr, 0);
		cJSON_Delete(arr);
	}
	char *s = cJSON_PrintUnformatted(out);
	cJSON_Delete(out);
	return s;
}

static void complete(struct split *sp, struct split_member *m)
{
	if (m->done)
		return;
	m->done = true;
	m->dirty = true;
	if (!m->gone && sp->remaining)
		sp->remaining--;
	if (m->gone)
		return;
	if (m->stream) {
		if (m->include_usage && sp->dialect != DIALECT_LLAMACPP && !alone_passthrough(sp)) {
			cJSON *obj = proto_copy(sp);
			cJSON_AddItemToObject(obj, "choices", cJSON_CreateArray());
			cJSON_AddItemToObject(obj, "usage", usage_json(sp, m));
			char *s = cJSON_PrintUnformatted(obj);
			emit_sse(m, s);
			free(s);
			cJSON_Delete(obj);
		}
		emit_sse(m, "[DONE]");
		return;
	}
	char *body = sp->dialect == DIALECT_LLAMACPP ? assemble_llamacpp(sp, m) : assemble_openai(sp, m);
	sbuf_reset(&m->out);
	sbuf_adds(&m->out, body);
	free(body);
	m->status = 200;
}

static void fail_member(struct split *sp, struct split_member *m, int status, const char *message)
{
	if (m->done)
		return;
	if (m->gone) {
		m->done = true;
		return;
	}
	char *err = openai_error_json(message, status >= 500 ? "server_error" : "invalid_request_error", NULL, NULL);
	if (m->stream) {
		emit_sse(m, err);
		emit_sse(m, "[DONE]");
	} else {
		sbuf_reset(&m->out);
		sbuf_adds(&m->out, err);
		m->status = status;
	}
	free(err);
	m->done = true;
	m->dirty = true;
	if (!m->gone && sp->remaining)
		sp->remaining--;
}

/* Merges one chunk's completions logprobs into acc (arrays are concatenated). */
static void merge_logprobs(cJSON **acc, const cJSON *lp)
{
	if (!cJSON_IsObject(lp))
		return;
	if (!*acc) {
		*acc = cJSON_Duplicate(lp, 1);
		return;
	}
	for (const cJSON *e = lp->child; e; e = e->next) {
		cJSON *dst = cJSON_GetObjectItemCaseSensitive(*acc, e->string);
		if (cJSON_IsArray(e) && cJSON_IsArray(dst)) {
			for (const cJSON *x = e->child; x; x = x->next)
				cJSON_AddItemToArray(dst, cJSON_Duplicate(x, 1));
		} else if (!dst) {
			cJSON_AddItemToObject(*acc, e->string, cJSON_Duplicate(e, 1));
		}
	}
}

static long num_field(const cJSON *obj, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, name);
	/* -1 too for a number no long holds (converting it would be undefined) */
	return cJSON_IsNumber(v) && fabs(v->valuedouble) < 9e15 ? (long)v->valuedouble : -1;
}

/* Client choice ci of m has ended (once): the member's and the call's counts (the batch frees
 * upstream sequence slots by sp->finished). */
static void mark_finished(struct split *sp, struct split_member *m, unsigned ci)
{
	if (m->fin[ci])
		return;
	m->fin[ci] = 1;
	m->finished++;
	sp->finished++;
}

/* Records one choice for member m at client index ci. */
static void take_choice(struct split *sp, struct split_member *m, unsigned ci, cJSON *ch, const cJSON *ev,
			const cJSON *usage)
{
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(ch, "text");
	if (cJSON_IsString(text) && text->valuestring[0])
		m->ntokens[ci]++;
	unsigned p = ci / sp->n;
	if (usage && cJSON_IsObject(usage)) {
		long pt = num_field(usage, "prompt_tokens"), ct = num_field(usage, "completion_tokens");
		if (pt >= 0)
			m->cu_prompt[p] = pt;
		if (ct >= 0)
			m->cu_completion[ci] = ct;
	}
	if (!m->stream) {
		if (cJSON_IsString(text))
			sbuf_adds(&m->text[ci], text->valuestring);
		merge_logprobs(&m->logprobs[ci], cJSON_GetObjectItemCaseSensitive(ch, "logprobs"));
		cJSON *copy = cJSON_Duplicate(ch, 1);
		cJSON_DeleteItemFromObjectCaseSensitive(copy, "text");
		if (m->last[ci]) {
			/* keep a finish_reason once seen */
			cJSON *fr = cJSON_GetObjectItemCaseSensitive(copy, "finish_reason");
			cJSON *old = cJSON_GetObjectItemCaseSensitive(m->last[ci], "finish_reason");
			if ((!fr || cJSON_IsNull(fr)) && cJSON_IsString(old))
				json_set(copy, "finish_reason", cJSON_Duplicate(old, 1));
			cJSON_Delete(m->last[ci]);
		}
		m->last[ci] = copy;
		if (sp->dialect == DIALECT_LLAMACPP) {
			cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
			if (cJSON_IsString(fr)) {
				/* the event's choices were taken out for routing: put this one back */
				cJSON_Delete(m->final[p]);
				m->final[p] = cJSON_Duplicate(ev, 1);
				cJSON *arr = cJSON_CreateArray();
				cJSON_AddItemToArray(arr, cJSON_Duplicate(ch, 1));
				json_set(m->final[p], "choices", arr);
			}
		}
	}
	cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
	if (cJSON_IsString(fr))
		mark_finished(sp, m, ci);
}

/* Keeps the first event with a choices array, unparsed (proto_copy). */
static void set_proto(struct split *sp, const char *data, size_t len)
{
	if (!sp->proto && !sp->proto_src.len)
		sbuf_add(&sp->proto_src, data, len);
}

/* The upstream's own error event ends every open member. The payload is {"error":{...}} (OpenAI,
 * vLLM) or, in llama.cpp's `error:` field, the error object itself. Streaming members get it as
 * an OpenAI-style `data: {"error":...}` event - the form the OpenAI SDKs raise - then [DONE];
 * non-streaming ones the error status and body. */
static void upstream_error_event(struct split *sp, const char *data, size_t len, bool is_error_field)
{
	cJSON *ev = cJSON_ParseWithLength(data, len);
	cJSON *err = NULL;
	if (ev && cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(ev, "error")))
		err = cJSON_GetObjectItemCaseSensitive(ev, "error");
	else if (ev && is_error_field && cJSON_IsObject(ev))
		err = ev;
	cJSON *msg = err ? cJSON_GetObjectItemCaseSensitive(err, "message") : NULL;
	long code = err ? num_field(err, "code") : -1;
	int status = code >= 400 && code < 600 ? (int)code : 500;
	char *wrapped = NULL;
	if (err) {
		cJSON *w = cJSON_CreateObject();
		cJSON_AddItemToObject(w, "error", cJSON_Duplicate(err, 1));
		wrapped = cJSON_PrintUnformatted(w);
		cJSON_Delete(w);
	}
	for (unsigned i = 0; i < sp->nmembers; i++) {
		struct split_member *m = sp->members[i];
		if (!m || m->done || m->gone)
			continue;
		if (m->stream) {
			if (wrapped)
				emit_sse(m, wrapped);
			else
				emit_raw(m, "data", data, len);
			emit_sse(m, "[DONE]");
			m->done = true;
			if (sp->remaining)
				sp->remaining--;
		} else {
			fail_member(sp, m, status, cJSON_IsString(msg) ? msg->valuestring : "the upstream failed mid-stream");
		}
	}
	free(wrapped);
	cJSON_Delete(ev);
}

/* The whole call's usage (OpenAI / vLLM include_usage), from an event without choices: kept (u, owned
 * now), and passed on as it is to a member alone in its call that asked for it. */
static void take_usage_total(struct split *sp, cJSON *u, const char *data, size_t len)
{
	cJSON_Delete(sp->usage_total);
	sp->usage_total = u;
	if (alone_passthrough(sp)) {
		struct split_member *m = sp->members[0];
		if (m && !m->done && !m->gone && m->stream && m->include_usage)
			emit_raw(m, "data", data, len);
	}
}

/* The fast path: a single-choice event for a streaming member is rewritten at the byte level (its
 * `index`, and vLLM's per-chunk usage removed) instead of parsed and printed; everything else
 * keeps its bytes. An event that starts with the call's template is scanned from its choice on.
 * Anything unusual returns CP_DECLINED and takes the full parse. They must all agree
 * (tests/unit/test_fastpath.c and tests/fuzz/fuzz_split.c compare them). */
/* Whether data holds a byte below 0x20 other than a tab; eight bytes at a time. */
static bool has_control(const char *data, size_t len)
{
	const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, data + i, 8);
		/* a byte b < 0x20 makes (b - 0x20) borrow into its high bit while b's own high bit is 0 */
		if (((w - 0x20 * ones) & ~w & highs) == 0)
			continue;
		for (size_t k = i; k < i + 8; k++)
			if ((unsigned char)data[k] < 0x20 && data[k] != '\t')
				return true;
	}
	for (; i < len; i++)
		if ((unsigned char)data[i] < 0x20 && data[i] != '\t')
			return true;
	return false;
}

/* What the byte path found in a single-choice event. */
struct fast_scan {
	const char *obj;		 /* the event's '{' */
	const char *is, *ie;		 /* the choice's index value */
	struct jscan_hit text, fr, usage; /* the choice's text and finish_reason; the top-level usage */
	bool no_choice; /* "choices":[]: the call's usage (take_usage) */
	/* what usage tells (usage_cut): its prompt and completion tokens (-1: not told) and the bytes
	 * removed from what the client sees ([cut_s, cut_e), NULL: none) */
	bool resolved;
	long u_prompt, u_compl;
	const char *cut_s, *cut_e;
};

static const char *const choice_keys[] = {"index", "text", "finish_reason"};

/* The choice object at ch, alone in its array (ce: the end of the text to scan): fills fs; returns
 * the position just after the array's ']', or NULL for anything else. */
static const char *scan_choice(const char *ch, const char *ce, struct fast_scan *fs)
{
	struct jscan_hit chk[3];
	const char *chend = jscan_members(ch, ce, choice_keys, 3, chk);
	const char *after = chend ? jscan_ws(chend, ce) : NULL;
	if (!after || after >= ce || *after != ']')
		return NULL; /* several choices */
	fs->is = chk[0].vstart;
	fs->ie = chk[0].vend;
	fs->text = chk[1];
	fs->fr = chk[2];
	return fs->is ? after + 1 : NULL;
}

/* The full byte scan: the event's top-level members, then its one choice. Learns the template from
 * an event whose usage (if any) follows its choices. */
static int scan_event(struct split *sp, const char *data, size_t len, struct fast_scan *fs)
{
	static const char *const top_keys[] = {"choices", "usage", "error"};
	const char *end = data + len;
	struct jscan_hit top[3];
	/* control bytes (a NUL, the line breaks of a multi-line event) would be copied raw into the
	 * client's stream: such events take the full parse, which re-prints them */
	if (has_control(data, len))
		return CP_DECLINED;
	const char *obj = jscan_ws(data, end);
	const char *obj_end = obj < end && *obj == '{' ? jscan_members(obj, end, top_keys, 3, top) : NULL;
	if (!obj_end || top[2].vstart)
		return CP_DECLINED;
	if (jscan_ws(obj_end, end) != end)
		return CP_DECLINED; /* anything after the object: the full parse decides */
	const char *cs = top[0].vstart, *ce = top[0].vend;
	if (!cs || *cs != '[')
		return CP_DECLINED;
	const char *ch = jscan_ws(cs + 1, ce);
	fs->obj = obj;
	fs->usage = top[1];
	if (ch < ce && *ch == ']') {
		fs->no_choice = true;
		return CP_OK;
	}
	if (ch >= ce || *ch != '{' || !scan_choice(ch, ce, fs))
		return CP_DECLINED;
	/* Every byte before the choice is then the same in the call's next events: with no usage or
	 * error among them, an event that starts with them needs a scan from its choice on only. */
	if (!sp->no_tpl && (!top[1].vstart || top[1].kstart > ch)) {
		sbuf_reset(&sp->tpl);
		sbuf_add(&sp->tpl, data, (size_t)(ch + 1 - data));
	}
	return CP_OK;
}

/* The template path: an event that starts with the template's bytes is at its first choice's '{'
 * right after them, inside the choices array of the top-level object, with no usage or error
 * before; what follows is scanned: the choice, the end of the array, the rest of the object. */
static int scan_tpl(struct split *sp, const char *data, size_t len, struct fast_scan *fs)
{
	static const char *const rest_keys[] = {"usage", "error"};
	size_t tl = sp->tpl.len;
	const char *end = data + len;
	struct jscan_hit rest[2];
	if (!tl || len <= tl || memcmp(data, sp->tpl.data, tl))
		return CP_DECLINED;
	if (has_control(data + tl, len - tl))
		return CP_DECLINED;
	const char *arr_end = scan_choice(data + tl - 1, end, fs);
	const char *obj_end = arr_end ? jscan_members_from(arr_end, end, rest_keys, 2, rest) : NULL;
	if (!obj_end || rest[1].vstart || jscan_ws(obj_end, end) != end)
		return CP_DECLINED;
	fs->obj = data;
	fs->usage = rest[0];
	sp->tpl_events++;
	return CP_OK;
}

/* vLLM's continuous usage: what it tells, and the bytes that remove it from what the client sees.
 * CP_DECLINED for a usage the byte path does not take. */
static int usage_cut(const struct split *sp, const char *data, size_t len, struct fast_scan *fs)
{
	const char *end = data + len, *is = fs->is, *ie = fs->ie;
	const char *us = fs->usage.kstart, *uvs = fs->usage.vstart, *uve = fs->usage.vend;
	fs->u_prompt = fs->u_compl = -1;
	fs->cut_s = fs->cut_e = NULL;
	if (!uvs) {
		fs->resolved = true;
		return CP_OK;
	}
	if (*uvs == '{') {
		static const char *const usage_keys[] = {"prompt_tokens", "completion_tokens"};
		struct jscan_hit u[2];
		unsigned long n;
		if (jscan_members(uvs, uve, usage_keys, 2, u)) {
			if (u[0].vstart && jscan_uint(u[0].vstart, u[0].vend, &n))
				fs->u_prompt = (long)n;
			if (u[1].vstart && jscan_uint(u[1].vstart, u[1].vend, &n))
				fs->u_compl = (long)n;
		}
	} else if (sp->dialect == DIALECT_VLLM && (uve - uvs != 4 || memcmp(uvs, "null", 4))) {
		return CP_DECLINED;
	}
	/* vLLM: the member goes, object or null, as the full parse drops it */
	if (sp->dialect == DIALECT_VLLM) {
		const char *q = us - 1;
		while (q > fs->obj && (*q == ' ' || *q == '\n' || *q == '\r' || *q == '\t'))
			q--;
		if (*q == ',') {
			fs->cut_s = q;
			fs->cut_e = uve;
		} else { /* the first member: take the comma after it */
			const char *r = jscan_ws(uve, end);
			if (r >= end || *r != ',')
				return CP_DECLINED;
			fs->cut_s = us;
			fs->cut_e = r + 1;
		}
		if (!(fs->cut_e <= is || fs->cut_s >= ie))
			return CP_DECLINED;
	}
	fs->resolved = true;
	return CP_OK;
}

struct skel_value {
	const char *s, *e;
	unsigned char kind, role;
};

/* Learns the layout from an event that starts with the template and that the byte path scanned
 * (fs, its usage resolved): its values in place of the index, the text, the usage figures; the rest
 * as bytes. An event that finishes its choice is not learned (its finish_reason would be). */
static void skel_learn(struct split *sp, const char *data, size_t len, const struct fast_scan *fs)
{
	struct split_skel *sk = sp->skel;
	if (sk && sk->misses > SK_GIVE_UP)
		return;
	if ((fs->fr.vstart && *fs->fr.vstart != 'n') || (fs->text.vstart && *fs->text.vstart != '"'))
		return;
	struct skel_value v[5];
	unsigned nv = 0;
	v[nv++] = (struct skel_value){fs->is, fs->ie, SK_UINT, SK_INDEX};
	if (fs->text.vstart)
		v[nv++] = (struct skel_value){fs->text.vstart + 1, fs->text.vend - 1, SK_STR, SK_TEXT};
	if (fs->usage.vstart && *fs->usage.vstart == '{') {
		static const char *const keys[] = {"prompt_tokens", "completion_tokens", "total_tokens"};
		static const unsigned char roles[] = {SK_UPROMPT, SK_UCOMPL, SK_NONE};
		struct jscan_hit u[3];
		unsigned long n;
		if (!jscan_members(fs->usage.vstart, fs->usage.vend, keys, 3, u))
			return;
		for (int i = 0; i < 3; i++)
			if (u[i].vstart && jscan_uint(u[i].vstart, u[i].vend, &n))
				v[nv++] = (struct skel_value){u[i].vstart, u[i].vend, SK_UINT, roles[i]};
	}
	for (unsigned i = 1; i < nv; i++) /* in the order of the bytes */
		for (unsigned j = i; j > 0 && v[j].s < v[j - 1].s; j--) {
			struct skel_value t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
	const char *cut[2] = {fs->cut_s, fs->cut_e}, *at = data + sp->tpl.len, *end = data + len;
	for (unsigned i = 0; i < nv; i++) /* a cut's end next to a value would move with its length */
		for (int c = 0; c < 2; c++)
			if (cut[c] && (cut[c] == v[i].s || cut[c] == v[i].e))
				return;
	if (!sk)
		sk = sp->skel = xcalloc(1, sizeof *sk);
	sbuf_reset(&sk->bytes);
	sk->n = 0;
	sk->misses++;
	sk->cut_piece[0] = sk->cut_piece[1] = -1;
	for (unsigned i = 0; i <= nv; i++) {
		const char *ls = at, *le = i < nv ? v[i].s : end;
		if (le < ls)
			goto fail;
		if (le > ls) { /* the bytes up to the next value, with the cut's ends that fall in them */
			sk->piece[sk->n].kind = SK_LIT;
			sk->piece[sk->n].off = (unsigned)sk->bytes.len;
			sk->piece[sk->n].len = (unsigned)(le - ls);
			sbuf_add(&sk->bytes, ls, (size_t)(le - ls));
			for (int c = 0; c < 2; c++)
				if (cut[c] && cut[c] >= ls && cut[c] <= le && sk->cut_piece[c] < 0) {
					sk->cut_piece[c] = (int)sk->n;
					sk->cut_off[c] = (unsigned)(cut[c] - ls);
				}
			sk->n++;
		}
		if (i == nv)
			break;
		sk->piece[sk->n].kind = v[i].kind;
		sk->piece[sk->n].role = v[i].role;
		sk->n++;
		at = v[i].e;
	}
	if (fs->cut_s && (sk->cut_piece[0] < 0 || sk->cut_piece[1] < 0))
		goto fail;
	return;
fail:
	sk->n = 0;
}

/* The layout path: an event that starts with the template and then has the layout's bytes, with
 * digits and strings in place of its values; fills fs as a scan would (usage resolved). */
static int scan_skel(struct split *sp, const char *data, size_t len, struct fast_scan *fs)
{
	const struct split_skel *sk = sp->skel;
	size_t tl = sp->tpl.len;
	if (!sk || !sk->n || !tl || len <= tl || memcmp(data, sp->tpl.data, tl))
		return CP_DECLINED;
	const char *p = data + tl, *end = data + len, *at[SK_MAX];
	fs->is = fs->ie = fs->text.vstart = fs->text.vend = fs->fr.vstart = fs->cut_s = fs->cut_e = NULL;
	fs->u_prompt = fs->u_compl = -1;
	for (unsigned i = 0; i < sk->n; i++) {
		at[i] = p;
		const char *q = p;
		switch (sk->piece[i].kind) {
		case SK_LIT:
			if ((size_t)(end - p) < sk->piece[i].len || memcmp(p, sk->bytes.data + sk->piece[i].off, sk->piece[i].len))
				return CP_DECLINED;
			p += sk->piece[i].len;
			continue;
		case SK_UINT: { /* 1 to 15 digits, as jscan_uint takes them */
			unsigned long n = 0;
			const char *lim = end - p > 15 ? p + 15 : end;
			for (unsigned d; q < lim && (d = (unsigned char)*q - '0') < 10; q++)
				n = n * 10 + d;
			if (q == p || (q < end && (unsigned)((unsigned char)*q - '0') < 10u))
				return CP_DECLINED;
			if (sk->piece[i].role == SK_INDEX) {
				fs->is = p;
				fs->ie = q;
			} else if (sk->piece[i].role == SK_UPROMPT) {
				fs->u_prompt = (long)n;
			} else if (sk->piece[i].role == SK_UCOMPL) {
				fs->u_compl = (long)n;
			}
			break;
		}
		default: /* a string's inside, up to its closing quote (the next piece's first byte) */
			for (; q < end && *q != '"'; q++) {
				if ((unsigned char)*q < 0x20 && *q != '\t')
					return CP_DECLINED;
				if (*q == '\\' && (++q >= end || ((unsigned char)*q < 0x20 && *q != '\t')))
					return CP_DECLINED;
			}
			fs->text.vstart = p - 1;
			fs->text.vend = q + 1;
		}
		p = q;
	}
	if (p != end)
		return CP_DECLINED;
	if (sk->cut_piece[0] >= 0) {
		fs->cut_s = at[sk->cut_piece[0]] + sk->cut_off[0];
		fs->cut_e = at[sk->cut_piece[1]] + sk->cut_off[1];
	}
	fs->obj = data;
	fs->resolved = true;
	sp->skel->misses = 0;
	sp->skel_events++;
	sp->tpl_events++;
	return CP_OK;
}

/* An event without choices whose usage is an object: only the usage is parsed (the full parse took
 * the whole event for it). */
static int take_usage(struct split *sp, const char *data, size_t len, const struct fast_scan *fs)
{
	const char *uvs = fs->usage.vstart;
	if (!uvs || *uvs != '{')
		return CP_DECLINED;
	cJSON *u = cJSON_ParseWithLength(uvs, (size_t)(fs->usage.vend - uvs));
	if (!cJSON_IsObject(u)) {
		cJSON_Delete(u);
		return CP_DECLINED;
	}
	take_usage_total(sp, u, data, len);
	sp->fast_events++;
	return CP_OK;
}

/* Writes the scanned event to the member that owns its choice, index rewritten. */
static int fast_take(struct split *sp, const char *data, size_t len, struct fast_scan *fs)
{
	const char *end = data + len, *is = fs->is, *ie = fs->ie;
	unsigned long idx;
	if (!jscan_uint(is, ie, &idx))
		return CP_DECLINED;
	unsigned slot = (unsigned)(idx / sp->n);
	if (slot >= sp->nslots)
		return CP_DECLINED;
	struct split_member *m = sp->members[sp->slot_owner[slot]];
	if (!m || m->gone || m->done)
		return CP_OK; /* nobody to tell */
	if (!m->stream)
		return CP_DECLINED; /* a body to assemble: the full parse keeps every field */
	unsigned ci = (slot - m->slot0) * sp->n + (unsigned)(idx % sp->n);
	bool content = false, finished = false;
	if (fs->text.vstart) {
		if (*fs->text.vstart != '"')
			return CP_DECLINED;
		content = fs->text.vend - fs->text.vstart > 2;
	}
	if (fs->fr.vstart)
		finished = *fs->fr.vstart == '"';
	if (!fs->resolved && usage_cut(sp, data, len, fs) != CP_OK)
		return CP_DECLINED;
	if (fs->u_prompt >= 0)
		m->cu_prompt[ci / sp->n] = fs->u_prompt;
	if (fs->u_compl >= 0)
		m->cu_completion[ci] = fs->u_compl;
	const char *cut_s = fs->cut_s, *cut_e = fs->cut_e;
	char digits[16], *dp = digits + sizeof digits;
	unsigned v = ci;
	do
		*--dp = (char)('0' + v % 10);
	while ((v /= 10));
	/* "data: ", the event in at most five pieces (the new index one of them, the cut left out),
	 * "\n\n": sized once, copied in one go */
	struct {
		const char *p;
		size_t n;
	} piece[5];
	int np = 0;
	size_t total = 8;
#define PIECE(from, to) (piece[np].p = (from), total += piece[np++].n = (size_t)((to) - (from)))
	if (cut_s && cut_e <= is) {
		PIECE(data, cut_s);
		PIECE(cut_e, is);
		PIECE(dp, digits + sizeof digits);
		PIECE(ie, end);
	} else if (cut_s) {
		PIECE(data, is);
		PIECE(dp, digits + sizeof digits);
		PIECE(ie, cut_s);
		PIECE(cut_e, end);
	} else {
		PIECE(data, is);
		PIECE(dp, digits + sizeof digits);
		PIECE(ie, end);
	}
#undef PIECE
	sbuf_reserve(&m->out, total);
	char *w = m->out.data + m->out.len;
	memcpy(w, "data: ", 6);
	w += 6;
	for (int i = 0; i < np; i++) {
		memcpy(w, piece[i].p, piece[i].n);
		w += piece[i].n;
	}
	memcpy(w, "\n\n", 2);
	w += 2;
	*w = 0;
	m->out.len = (size_t)(w - m->out.data);
	m->dirty = true;
	sp->fast_events++;
	if (content)
		m->ntokens[ci]++;
	if (finished)
		mark_finished(sp, m, ci);
	if (m->finished == m->nchoices && !alone_passthrough(sp))
		complete(sp, m);
	return CP_OK;
}

/* The byte path: the template when the event starts with it, else the full byte scan; CP_DECLINED
 * sends the event to the full parse. */
static int fast_event(struct split *sp, const char *data, size_t len)
{
	struct fast_scan fs; /* scan_skel sets what it tells */
	if (!sp->no_skel && scan_skel(sp, data, len, &fs) == CP_OK)
		return fast_take(sp, data, len, &fs);
	fs = (struct fast_scan){.resolved = false};
	int rc = scan_tpl(sp, data, len, &fs);
	if (rc == CP_DECLINED)
		rc = scan_event(sp, data, len, &fs);
	if (rc != CP_OK)
		return rc;
	if (fs.no_choice)
		return take_usage(sp, data, len, &fs);
	/* an event the layout did not fit teaches the layout: the template is its own start */
	if (!sp->no_skel && !sp->no_tpl && sp->tpl.len && len > sp->tpl.len && !memcmp(data, sp->tpl.data, sp->tpl.len) &&
	    usage_cut(sp, data, len, &fs) == CP_OK)
		skel_learn(sp, data, len, &fs);
	return fast_take(sp, data, len, &fs);
}

int split_event(struct split *sp, const char *data, size_t len, bool is_error_field)
{
	sp->events++;
	if (len == 6 && !memcmp(data, "[DONE]", 6)) {
		sp->upstream_done = true;
		split_end(sp, 0, NULL);
		return CP_OK;
	}
	if (is_error_field) {
		upstream_error_event(sp, data, len, true);
		return CP_OK;
	}
	/* the call's first event takes the full parse (and keeps its bytes for the prototype) */
	if ((sp->proto || sp->proto_src.len) && !sp->no_fast) {
		int rc = fast_event(sp, data, len);
		if (rc != CP_DECLINED)
			return rc;
	}
	cJSON *ev = cJSON_ParseWithLength(data, len);
	if (!ev || !cJSON_IsObject(ev)) {
		cJSON_Delete(ev);
		return CP_ERROR;
	}
	if (cJSON_GetObjectItemCaseSensitive(ev, "error")) {
		cJSON_Delete(ev);
		upstream_error_event(sp, data, len, false);
		return CP_OK;
	}
	cJSON *choices = cJSON_GetObjectItemCaseSensitive(ev, "choices");
	cJSON *usage = cJSON_GetObjectItemCaseSensitive(ev, "usage");
	if (!cJSON_IsArray(choices)) {
		cJSON_Delete(ev);
		return CP_ERROR;
	}
	set_proto(sp, data, len);
	if (!choices->child) {
		if (cJSON_IsObject(usage))
			take_usage_total(sp, cJSON_Duplicate(usage, 1), data, strnlen(data, len));
		cJSON_Delete(ev);
		return CP_OK;
	}
	/* Group the choices by member, preserving their order. */
	unsigned nch = 0;
	for (cJSON *c = choices->child; c; c = c->next)
		nch++;
	cJSON **items = xcalloc(nch, sizeof *items);
	unsigned *owner = xcalloc(nch, sizeof *owner);
	unsigned *cidx = xcalloc(nch, sizeof *cidx);
	unsigned k = 0;
	int rc = CP_OK;
	while (choices->child) {
		cJSON *c = cJSON_DetachItemViaPointer(choices, choices->child);
		items[k] = c;
		long idx = num_field(c, "index");
		unsigned slot = idx >= 0 ? (unsigned)idx / sp->n : 0;
		if (idx < 0 || slot >= sp->nslots) {
			owner[k] = UINT32_MAX;
			rc = CP_ERROR;
		} else {
			owner[k] = sp->slot_owner[slot];
			struct split_member *m = sp->members[owner[k]];
			if (!m) /* moved to another call */
				owner[k] = UINT32_MAX;
			else
				cidx[k] = (slot - m->slot0) * sp->n + (unsigned)idx % sp->n;
		}
		k++;
	}
	bool strip_usage = sp->dialect == DIALECT_VLLM; /* continuous usage is carpool's request, not the client's */
	for (unsigned i = 0; i < nch; i++) {
		if (!items[i] || owner[i] == UINT32_MAX) {
			cJSON_Delete(items[i]);
			items[i] = NULL;
			continue;
		}
		struct split_member *m = sp->members[owner[i]];
		cJSON *arr = cJSON_CreateArray();
		for (unsigned j = i; j < nch; j++) {
			if (!items[j] || owner[j] != owner[i])
				continue;
			if (m->gone || m->done) {
				cJSON_Delete(items[j]);
			} else {
				json_set(items[j], "index", cJSON_CreateNumber(cidx[j]));
				take_choice(sp, m, cidx[j], items[j], ev, nch == 1 ? usage : NULL);
				cJSON_AddItemToArray(arr, items[j]);
			}
			items[j] = NULL;
		}
		if (!arr->child) {
			cJSON_Delete(arr);
			continue;
		}
		json_set(ev, "choices", arr); /* keeps its place; frees the old */
		if (m->stream) {
			cJSON *saved = NULL;
			if (strip_usage && usage)
				saved = cJSON_DetachItemFromObjectCaseSensitive(ev, "usage");
			char *s = cJSON_PrintUnformatted(ev);
			emit_sse(m, s);
			free(s);
			if (saved) {
				cJSON_AddItemToObject(ev, "usage", saved);
				usage = saved;
			}
		}
		if (m->finished == m->nchoices && !alone_passthrough(sp))
			complete(sp, m);
	}
	for (unsigned i = 0; i < nch; i++)
		cJSON_Delete(items[i]);
	free(items);
	free(owner);
	free(cidx);
	cJSON_Delete(ev);
	return rc;
}

void split_end(struct split *sp, int status, const char *message)
{
	for (unsigned i = 0; i < sp->nmembers; i++) {
		struct split_member *m = sp->members[i];
		if (!m || m->done)
			continue;
		if (message)
			fail_member(sp, m, status, message);
		else if (m->finished < m->nchoices && !sp->upstream_done)
			fail_member(sp, m, 502, "the upstream ended the stream early");
		else
			complete(sp, m);
	}
}

void split_member_gone(struct split *sp, struct split_member *m)
{
	if (m->gone)
		return;
	m->gone = true;
	m->dirty = false;
	sbuf_reset(&m->out);
	if (!m->done && sp->remaining)
		sp->remaining--;
}
