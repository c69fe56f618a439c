/* router: what each client request becomes - a batched completion or embedding (batcher.h, or relay.h
 * when batches form on worker 0), one of carpool's own endpoints, or a request forwarded as it came
 * (proxy.h) - and the client-key checks. */
#include "carpool/router.h"
#include "carpool/auth.h"
#include "carpool/batcher.h"
#include "carpool/relay.h"
#include "carpool/intake.h"
#include "carpool/metrics.h"
#include "carpool/proxy.h"
#include "carpool/server.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

unsigned router_candidates(struct router *rt, const char *model)
{
	unsigned mask = 0;
	for (int i = 0; i < rt->nups; i++) {
		const struct cfg_upstream *u = rt->ups[i].cfg;
		for (int k = 0; k < u->nmodels; k++)
			if (!strcmp(u->models[k], "*") || (model && !strcmp(u->models[k], model)))
				mask |= 1u << i;
	}
	return mask;
}

/* The least loaded of the upstreams in mask (calls in flight per unit of weight; unhealthy last). */
static struct upstream *pick_among(struct router *rt, unsigned mask)
{
	return upstream_pick(rt->ups, rt->nups, mask, 0, UPSTREAM_PICK_CALLS);
}

struct upstream *router_pick(struct router *rt, const char *model)
{
	return pick_among(rt, router_candidates(rt, model));
}

static void key_end(void *arg) { auth_release(arg); }

static bool keys_mode(struct router *rt) { return rt->auth && auth_enabled(rt->auth); }

/* Client keys (constant-time compare) and their limits; true if the request may go on. */
static bool check_key(struct router *rt, struct creq *r)
{
	if (!keys_mode(rt))
		return true;
	const char *h = creq_header(r, "Authorization");
	struct auth_key *k = NULL;
	long retry = 1;
	enum auth_verdict v = auth_check(rt->auth, h, now_us(), &k, &retry);
	if (v == AUTH_UNKNOWN) {
		creq_reply_error(r, 401, h ? "Incorrect API key provided." : "You didn't provide an API key.",
				 "invalid_request_error", NULL, "invalid_api_key");
		return false;
	}
	if (v != AUTH_OK) {
		char extra[48];
		snprintf(extra, sizeof extra, "Retry-After: %ld\r\n", retry);
		char *body = openai_error_json(v == AUTH_RATE ? "Rate limit reached for requests per minute on this key."
							      : "Too many concurrent requests on this key.",
					       "requests", NULL, "rate_limit_exceeded");
		CNT_ADD(rt->metrics->key_limited_total, 1);
		creq_reply(r, 429, "application/json", extra, body, strlen(body));
		free(body);
		return false;
	}
	snprintf(r->key_name, sizeof r->key_name, "%s", k->name);
	creq_on_end(r, key_end, k);
	return true;
}

/* --- local endpoints ---------------------------------------------------------------------------- */

_Static_assert(UPE_BROKEN - UPE_CONNECT + 1 == METRICS_NCAUSES, "a failure cause without a label");

/* GET /metrics: every worker's figures (rt->peers) gathered into one view, rendered by metrics.c. The
 * figures are read without locks: each is written by its own worker only (CNT_ADD), read here with
 * relaxed atomic loads (CNT_GET). Health and readiness are one record per upstream (upstream.h). */
static void metrics(struct router *rt, struct creq *r)
{
	struct router *self[1] = {rt};
	struct router **peers = rt->peers ? rt->peers : self;
	int npeers = rt->peers ? rt->npeers : 1;
	struct metrics_view v = {.nups = rt->nups};
	struct metrics *workers[64];
	for (int p = 0; p < npeers; p++) {
		if (peers[p]->bt) { /* in shared mode worker 0 alone has one */
			const struct batcher_stats x = batcher_stats(peers[p]->bt);
#define ADD(name, member, type, help) v.batch.name += x.member;
			METRICS_BATCH(ADD)
#undef ADD
		}
		if (peers[p]->metrics && v.nworkers < 64)
			workers[v.nworkers++] = peers[p]->metrics;
	}
	v.workers = workers;
	for (int e = 0; e < METRICS_NCAUSES; e++)
		v.causes[e] = upcall_error_name((enum upcall_error)(UPE_CONNECT + e));
	uint64_t now = now_us();
	for (int i = 0; i < rt->nups; i++) {
		struct metrics_upstream *u = &v.ups[i];
		u->url = rt->ups[i].cfg->url;
		u->upstream_load_signal_age_seconds = -1; /* the freshest figures, of the worker that polls */
		for (int p = 0; p < npeers; p++) {
			const struct upstream *c = &peers[p]->ups[i];
			u->upstream_inflight += CNT_GET(c->inflight);
			u->upstream_sequences += CNT_GET(c->seqs);
			if (upstream_capacity(c) > u->upstream_sequence_capacity)
				u->upstream_sequence_capacity = upstream_capacity(c);
			uint64_t at = CNT_GET(c->sig_at);
			double age = now > at ? (double)(now - at) / 1e6 : 0;
			if (CNT_GET(c->sig_fresh) && at &&
			    (u->upstream_load_signal_age_seconds < 0 || age < u->upstream_load_signal_age_seconds))
				u->upstream_load_signal_age_seconds = age;
#define FIGURE(name, type, ctype, fmt, help)
#define SUM(name, member, help) u->name += CNT_GET(c->member);
			METRICS_UPSTREAM(FIGURE, SUM)
#undef FIGURE
#undef SUM
			for (int e = 0; e < METRICS_NCAUSES; e++)
				u->failures_by_cause[e] += CNT_GET(c->errors_by[UPE_CONNECT + e]);
		}
		u->upstream_healthy = upstream_healthy(&rt->ups[i]);
		u->upstream_ready = upstream_ready(&rt->ups[i]);
	}
	struct sbuf b = {0};
	metrics_render(&b, &v);
	creq_reply(r, 200, "text/plain; version=0.0.4", NULL, b.data, b.len);
	sbuf_free(&b);
}

/* Ready: some upstream has answered and has not been failing since for its grace period. */
static bool ready(struct router *rt)
{
	for (int i = 0; i < rt->nups; i++)
		if (upstream_ready(&rt->ups[i]))
			return true;
	return false;
}

/* The same answer on every route for a model no upstream serves: 404 model_not_found, naming it. */
static void no_such_model(struct creq *r, const char *model)
{
	char msg[300];
	if (!model) { /* only an upstream that serves any model ("*") takes a request that names none */
		creq_reply_error(r, 400, "You must provide a model parameter: no upstream here serves requests without one.",
				 "invalid_request_error", "model", NULL);
		return;
	}
	snprintf(msg, sizeof msg, "The model '%.200s' is not served here: no upstream lists it.", model);
	creq_reply_error(r, 404, msg, "invalid_request_error", "model", "model_not_found");
}

static void completions(struct router *rt, struct creq *r, bool embed)
{
	struct intake_req req;
	struct intake_error err;
	int rc = embed ? intake_parse_embedding(r->body.data ? r->body.data : "", r->body.len, &req, &err)
		       : intake_parse_completion(r->body.data ? r->body.data : "", r->body.len, &req, &err);
	if (rc != CP_OK) {
		creq_reply_error(r, err.status, err.message, err.type, err.param, err.code);
		return;
	}
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(req.body, "model");
	unsigned cands = router_candidates(rt, cJSON_IsString(model) ? model->valuestring : NULL);
	if (!cands) {
		no_such_model(r, cJSON_IsString(model) ? model->valuestring : NULL);
		intake_free(&req);
		return;
	}
	/* llama.cpp's server refuses n != 1 with a 500 (which would be retried as a server fault): when
	 * every candidate speaks its dialect, the client is told at once what is wrong with its request. */
	bool all_llama = !embed && req.n != 1;
	for (int i = 0; i < rt->nups && all_llama; i++)
		if ((cands & (1u << i)) && rt->ups[i].dialect != DIALECT_LLAMACPP)
			all_llama = false;
	if (all_llama) {
		intake_free(&req);
		creq_reply_error(r, 400, "'n' must be 1: llama.cpp's server gives one choice per prompt.",
				 "invalid_request_error", "n", NULL);
		return;
	}
	/* A forwarded client credential keys the batch. An upstream with a credential of its own never
	 * gets the client's; candidates are either all of one kind or each keeps its own rule. */
	const char *auth = NULL;
	bool forwards = false;
	for (int i = 0; i < rt->nups; i++)
		if ((cands & (1u << i)) && !rt->ups[i].auth)
			forwards = true;
	if (forwards && !keys_mode(rt))
		auth = creq_header(r, "Authorization");
	if (rt->relay)
		relay_submit(rt->relay, &r->sink, &req, cands, auth, embed);
	else if (embed)
		batcher_submit_embed(rt->bt, &r->sink, &req, cands, auth);
	else
		batcher_submit(rt->bt, &r->sink, &req, cands, auth);
}

/* carpool's own endpoints, answered without a key. */
static bool local_path(const char *path)
{
	return !strcmp(path, "/healthz") || !strcmp(path, "/readyz") || !strcmp(path, "/metrics");
}

bool router_head(struct creq *r, void *arg)
{
	bool local = local_path(r->path);
	if (r->serve != SERVE_ALL && local != (r->serve == SERVE_OPS)) { /* not served on this listener */
		creq_reply_error(r, 404, "Not found on this listener.", "invalid_request_error", NULL, NULL);
		return false;
	}
	return local || check_key(arg, r);
}

/* Runs after router_head accepted the request's head. */
void router_handle(struct creq *r, void *arg)
{
	struct router *rt = arg;
	if (!strcmp(r->path, "/healthz")) {
		creq_reply(r, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
		return;
	}
	if (!strcmp(r->path, "/readyz")) {
		if (ready(rt))
			creq_reply(r, 200, "application/json", NULL, "{\"status\":\"ready\"}", 18);
		else
			creq_reply(r, 503, "application/json", NULL, "{\"status\":\"no upstream answering\"}", 34);
		return;
	}
	if (!strcmp(r->path, "/metrics")) {
		metrics(rt, r);
		return;
	}
	bool embed = !strcmp(r->path, "/v1/embeddings");
	if (embed || !strcmp(r->path, "/v1/completions")) {
		if (strcmp(r->method, "POST")) {
			char msg[96];
			snprintf(msg, sizeof msg, "Method not allowed: use POST for %s.", r->path);
			char *body = openai_error_json(msg, "invalid_request_error", NULL, "method_not_allowed");
			creq_reply(r, 405, "application/json", "Allow: POST\r\n", body, strlen(body));
			free(body);
			return;
		}
		completions(rt, r, embed);
		return;
	}
	if (rt->nups > 1 && !strcmp(r->path, "/v1/models") && !strcmp(r->method, "GET")) {
		proxy_models(r, rt->ups, rt->nups, keys_mode(rt) ? NULL : creq_header(r, "Authorization"));
		return;
	}
	struct upstream *up = router_pick(rt, NULL);
	if (r->body.len && !strcmp(r->method, "POST")) {
		cJSON *j = cJSON_ParseWithLength(r->body.data, r->body.len);
		cJSON *model = j ? cJSON_GetObjectItemCaseSensitive(j, "model") : NULL;
		if (!up && cJSON_IsObject(j) && !model) {
			no_such_model(r, NULL);
			cJSON_Delete(j);
			return;
		}
		if (cJSON_IsString(model)) {
			struct upstream *u = router_pick(rt, model->valuestring);
			if (!u) {
				no_such_model(r, model->valuestring);
				cJSON_Delete(j);
				return;
			}
			up = u;
		}
		cJSON_Delete(j);
	}
	if (!up) /* a request that names no model (GET /v1/models, ...): any upstream can answer it */
		up = pick_among(rt, rt->nups >= 32 ? ~0u : (1u << rt->nups) - 1);
	if (!up) {
		creq_reply_error(r, 502, "No upstream is configured.", "server_error", NULL, NULL);
		return;
	}
	CNT_ADD(rt->metrics->passthrough_total, 1);
	proxy_pass(r, up, keys_mode(rt) ? NULL : creq_header(r, "Authorization"));
}
