/* embed: embeddings parts out, answers back together. Pure. */
#include "carpool/embed.h"

#include <stdlib.h>
#include <string.h>

unsigned embed_plan(const unsigned *est, unsigned n, unsigned limit, unsigned long tok_limit, unsigned *starts)
{
	unsigned nparts = 0, count = 0;
	unsigned long toks = 0;
	for (unsigned k = 0; k < n; k++) {
		if (count && (count + 1 > limit || toks + est[k] > tok_limit)) {
			count = 0;
			toks = 0;
		}
		if (!count)
			starts[nparts++] = k;
		count++;
		toks += est[k];
	}
	starts[nparts] = n;
	return nparts;
}

void embed_whole_init(struct embed_whole *w, unsigned ninputs, unsigned nparts)
{
	memset(w, 0, sizeof *w);
	w->ninputs = ninputs;
	w->items = xcalloc(ninputs ? ninputs : 1, sizeof *w->items);
	w->exact = true;
	w->parts_left = nparts;
}

void embed_whole_release(struct embed_whole *w)
{
	for (unsigned i = 0; i < w->ninputs; i++)
		cJSON_Delete(w->items[i]);
	free(w->items);
	cJSON_Delete(w->proto);
	memset(w, 0, sizeof *w);
}

void embed_apportion(long total, const long *weights, long *out, unsigned n)
{
	long wsum = 0, given = 0;
	for (unsigned i = 0; i < n; i++)
		wsum += weights[i];
	if (wsum <= 0) {
		for (unsigned i = 0; i < n; i++)
			out[i] = i == 0 ? total : 0;
		return;
	}
	double *rem = xcalloc(n, sizeof *rem);
	for (unsigned i = 0; i < n; i++) {
		double exact = (double)total * (double)weights[i] / (double)wsum;
		out[i] = (long)exact;
		rem[i] = exact - (double)out[i];
		given += out[i];
	}
	while (given < total) {
		unsigned best = 0;
		for (unsigned i = 1; i < n; i++)
			if (rem[i] > rem[best])
				best = i;
		out[best]++;
		rem[best] = -1;
		given++;
	}
	free(rem);
}

int embed_take_answer(const char *body, size_t len, struct embed_part *const *parts, unsigned nparts,
		      uint64_t batch_id)
{
	unsigned ninputs = 0;
	for (unsigned i = 0; i < nparts; i++)
		ninputs += parts[i]->ninputs;
	cJSON *j = cJSON_ParseWithLength(body ? body : "", len);
	cJSON *data = j ? cJSON_GetObjectItemCaseSensitive(j, "data") : NULL;
	if (!cJSON_IsArray(data) || cJSON_GetArraySize(data) != (int)ninputs) {
		cJSON_Delete(j);
		return CP_ERROR;
	}
	cJSON *usage = cJSON_GetObjectItemCaseSensitive(j, "usage");
	cJSON *pt = usage ? cJSON_GetObjectItemCaseSensitive(usage, "prompt_tokens") : NULL;
	long total = cJSON_IsNumber(pt) ? (long)pt->valuedouble : 0;
	long *w = xcalloc(nparts, sizeof *w), *share = xcalloc(nparts, sizeof *share);
	unsigned *slot0 = xcalloc(nparts, sizeof *slot0);
	unsigned slot = 0;
	for (unsigned i = 0; i < nparts; i++) {
		slot0[i] = slot;
		slot += parts[i]->ninputs;
		for (unsigned k = 0; k < parts[i]->ninputs; k++)
			w[i] += parts[i]->tok_est[k];
	}
	embed_apportion(total, w, share, nparts);
	cJSON *proto = cJSON_Duplicate(j, 1);
	cJSON_DeleteItemFromObjectCaseSensitive(proto, "data");
	cJSON_DeleteItemFromObjectCaseSensitive(proto, "usage");
	while (data->child) {
		cJSON *it = cJSON_DetachItemViaPointer(data, data->child);
		cJSON *idx = cJSON_GetObjectItemCaseSensitive(it, "index");
		long gi = cJSON_IsNumber(idx) ? (long)idx->valuedouble : -1;
		unsigned owner = nparts;
		for (unsigned i = 0; gi >= 0 && i < nparts; i++)
			if ((unsigned)gi >= slot0[i] && (unsigned)gi < slot0[i] + parts[i]->ninputs)
				owner = i;
		if (owner == nparts) {
			cJSON_Delete(it);
			continue;
		}
		struct embed_whole *wh = parts[owner]->whole;
		unsigned local = parts[owner]->offset + ((unsigned)gi - slot0[owner]);
		json_set(it, "index", cJSON_CreateNumber(local));
		if (!wh->failed && local < wh->ninputs && !wh->items[local])
			wh->items[local] = it;
		else
			cJSON_Delete(it);
	}
	for (unsigned i = 0; i < nparts; i++) {
		struct embed_whole *wh = parts[i]->whole;
		wh->prompt_tokens += share[i];
		if (nparts > 1)
			wh->exact = false;
		wh->batch_id = batch_id;
		wh->batch_size = ninputs;
		if (!wh->proto)
			wh->proto = cJSON_Duplicate(proto, 1);
		if (wh->parts_left)
			wh->parts_left--;
	}
	cJSON_Delete(proto);
	free(w);
	free(share);
	free(slot0);
	cJSON_Delete(j);
	return CP_OK;
}

char *embed_reply_body(struct embed_whole *w)
{
	cJSON *obj = w->proto ? cJSON_Duplicate(w->proto, 1) : cJSON_CreateObject();
	if (!cJSON_GetObjectItemCaseSensitive(obj, "object"))
		cJSON_AddStringToObject(obj, "object", "list");
	cJSON *data = cJSON_AddArrayToObject(obj, "data");
	for (unsigned i = 0; i < w->ninputs; i++) {
		cJSON_AddItemToArray(data, w->items[i] ? w->items[i] : cJSON_CreateNull());
		w->items[i] = NULL;
	}
	cJSON *u = cJSON_AddObjectToObject(obj, "usage");
	cJSON_AddNumberToObject(u, "prompt_tokens", (double)w->prompt_tokens);
	cJSON_AddNumberToObject(u, "total_tokens", (double)w->prompt_tokens);
	char *body = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	return body;
}
