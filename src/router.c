/* router: routes client requests; pass-through proxying for everything carpool does not batch. */
#include "carpool/router.h"
#include "carpool/auth.h"
#include "carpool/batcher.h"
#include "carpool/http.h"
#include "carpool/relay.h"
#include "carpool/intake.h"
#include "carpool/metrics.h"
#include "carpool/server.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <openssl/crypto.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
	struct upstream *best = NULL;
	double best_load = 0;
	for (int i = 0; i < rt->nups; i++) {
		if (!(mask & (1u << i)))
			continue;
		struct upstream *up = &rt->ups[i];
		double load = (double)up->inflight / (double)up->cfg->weight + (upstream_healthy(up) ? 0 : 1e9);
		if (!best || load < best_load) {
			best = up;
			best_load = load;
		}
	}
	return best;
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
		CNT_ADD(rt->limited, 1);
		creq_reply(r, 429, "application/json", extra, body, strlen(body));
		free(body);
		return false;
	}
	snprintf(r->key_name, sizeof r->key_name, "%s", k->name);
	creq_on_end(r, key_end, k);
	return true;
}

/* --- pass-through --------------------------------------------------------------------------- */

/* A pass-through call writes its answer to the client's sink. */
struct pass {
	struct sink *r;
	const char *path; /* the request's, for the log: lives as long as r */
	struct upstream *up;
	struct upcall *call;
	bool head_sent;
};

/* Whether a header stays on this hop: the fixed list, and any the message's Connection names. */
static bool hop_by_hop(const char *name, const char *connection)
{
	if (connection && http_list_has(connection, name))
		return true;
	static const char *const skip[] = {"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authorization",
					   "Proxy-Authenticate", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
					   "Host", "Content-Length", "Authorization", "Expect", "Server", NULL};
	for (int i = 0; skip[i]; i++)
		if (!strcasecmp(name, skip[i]))
			return true;
	return false;
}

static void pass_gone(void *arg)
{
	struct pass *p = arg;
	p->r = NULL;
	if (p->call) {
		upcall_cancel(p->call);
		p->call = NULL;
	}
	free(p);
}

static void pass_head(void *arg, int status, const struct evkeyvalq *headers)
{
	struct pass *p = arg;
	if (!p->r)
		return;
	struct sbuf extra = {0};
	const char *ctype = NULL;
	const char *connection = evhttp_find_header(headers, "Connection");
	for (const struct evkeyval *kv = headers->tqh_first; kv; kv = kv->next.tqe_next) {
		if (!strcasecmp(kv->key, "Content-Type")) {
			ctype = kv->value;
			continue;
		}
		/* carpool's own Date and X-Request-Id head every answer it writes */
		if (hop_by_hop(kv->key, connection) || !strcasecmp(kv->key, "Date") ||
		    !strcasecmp(kv->key, "X-Request-Id") || strchr(kv->value, '\n') || strchr(kv->value, '\r'))
			continue;
		sbuf_printf(&extra, "%s: %s\r\n", kv->key, kv->value);
	}
	if (ctype && !strncasecmp(ctype, "text/event-stream", 17))
		sbuf_adds(&extra, "X-Accel-Buffering: no\r\n");
	sink_start(p->r, status, ctype, extra.data);
	sbuf_free(&extra);
	p->head_sent = true;
}

static void pass_data(void *arg, const char *data, size_t len)
{
	struct pass *p = arg;
	if (!p->r || !p->head_sent)
		return;
	sink_write(p->r, data, len); /* a client dropped as too slow: pass_gone, from the loop */
}

static void pass_done(void *arg, enum upcall_error err)
{
	struct pass *p = arg;
	p->call = NULL;
	if (p->r) {
		struct sink *r = p->r;
		sink_on_gone(r, NULL, NULL);
		if (p->head_sent && err != UPE_NONE) {
			/* a clean end would pass a cut answer off as whole: let the client see the break */
			log_warn("pass-through %s: the upstream %s broke mid-answer (%s); closing the client connection",
				 p->path, p->up->cfg->url, upcall_error_name(err));
			sink_abort(r);
		} else if (p->head_sent) {
			sink_end(r);
		} else {
			char msg[300];
			snprintf(msg, sizeof msg, "carpool could not get an answer from the upstream %.200s (%s)",
				 p->up->cfg->url, upcall_error_name(err));
			sink_reply_error(r, err == UPE_FIRST_BYTE || err == UPE_IDLE ? 504 : 502, msg, "server_error", NULL,
					 NULL);
		}
	}
	free(p);
}

static const struct upcall_ops pass_ops = {pass_head, pass_data, pass_done};

static void passthrough(struct router *rt, struct creq *r, struct upstream *up)
{
	const char **hdrs = xcalloc(r->nheaders * 2 + 7, sizeof *hdrs);
	size_t n = 0;
	const char *connection = creq_header(r, "Connection");
	struct sbuf xff = {0};
	for (size_t i = 0; i < r->nheaders; i++) {
		const char *name = r->headers[i].name;
		/* these three carpool sets itself; traceparent and tracestate pass as they came */
		if (!strcasecmp(name, "X-Forwarded-For")) /* kept, with the client's address after it */
			sbuf_printf(&xff, "%s, ", r->headers[i].value);
		if (hop_by_hop(name, connection) || !strcasecmp(name, "X-Request-Id") ||
		    !strcasecmp(name, "X-Forwarded-For") || !strcasecmp(name, "X-Forwarded-Proto"))
			continue;
		hdrs[2 * n] = name;
		hdrs[2 * n + 1] = r->headers[i].value;
		n++;
	}
	/* the client's address (the peer without its port) after every X-Forwarded-For it sent */
	const char *port = strcmp(r->peer, "unix") ? strrchr(r->peer, ':') : NULL;
	sbuf_add(&xff, r->peer, port ? (size_t)(port - r->peer) : strlen(r->peer));
	sbuf_add(&xff, "", 1);
	const char *extra[] = {"X-Request-Id", r->id, "X-Forwarded-For", xff.data, "X-Forwarded-Proto", r->tls ? "https" : "http"};
	for (size_t i = 0; i < 6; i++)
		hdrs[2 * n + i] = extra[i];
	n += 3;
	const char *auth = keys_mode(rt) ? NULL : creq_header(r, "Authorization");
	struct pass *p = xcalloc(1, sizeof *p);
	p->r = &r->sink;
	p->path = r->path;
	r->sink.note.upstream = up->cfg->url;
	CNT_ADD(rt->passthrough, 1);
	p->up = up;
	p->call = upstream_call(up, r->method, r->target, hdrs, n, auth, r->body.data, r->body.len, &pass_ops, p);
	free(hdrs);
	sbuf_free(&xff);
	if (!p->call) {
		free(p);
		char msg[300];
		snprintf(msg, sizeof msg, "carpool could not reach the upstream %.200s", up->cfg->url);
		creq_reply_error(r, 502, msg, "server_error", NULL, NULL);
		return;
	}
	creq_on_gone(r, pass_gone, p);
}

/* --- GET /v1/models with several upstreams: the union of their lists ------------------------------ */

struct models_fan {
	struct creq *r;
	unsigned pending;
	cJSON *data;	      /* merged list */
	struct sbuf body[CFG_MAX_UPSTREAMS];
	int status[CFG_MAX_UPSTREAMS];
	struct models_call {
		struct models_fan *fan;
		int i;
	} calls[CFG_MAX_UPSTREAMS];
};

static void models_gone(void *arg)
{
	((struct models_fan *)arg)->r = NULL;
}

static void models_head(void *arg, int status, const struct evkeyvalq *headers)
{
	(void)headers;
	struct models_call *c = arg;
	c->fan->status[c->i] = status;
}

static void models_data(void *arg, const char *data, size_t len)
{
	struct models_call *c = arg;
	if (c->fan->body[c->i].len + len < (4u << 20))
		sbuf_add(&c->fan->body[c->i], data, len);
}

static void models_release(struct models_fan *f);

static void models_done(void *arg, enum upcall_error err)
{
	struct models_call *c = arg;
	struct models_fan *f = c->fan;
	if (err == UPE_NONE && f->status[c->i] == 200) {
		cJSON *j = cJSON_ParseWithLength(f->body[c->i].data ? f->body[c->i].data : "", f->body[c->i].len);
		cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "data") : NULL;
		for (cJSON *m = cJSON_IsArray(d) ? d->child : NULL; m; m = m->next) {
			cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
			bool dup = false;
			for (cJSON *e = f->data->child; e && cJSON_IsString(id); e = e->next) {
				cJSON *eid = cJSON_GetObjectItemCaseSensitive(e, "id");
				dup = dup || (cJSON_IsString(eid) && !strcmp(eid->valuestring, id->valuestring));
			}
			if (!dup)
				cJSON_AddItemToArray(f->data, cJSON_Duplicate(m, 1));
		}
		cJSON_Delete(j);
	}
	sbuf_free(&f->body[c->i]);
	models_release(f);
}

/* Drops one hold on the fan-out; the last one answers the client and frees it. */
static void models_release(struct models_fan *f)
{
	if (--f->pending)
		return;
	if (f->r) {
		creq_on_gone(f->r, NULL, NULL);
		cJSON *out = cJSON_CreateObject();
		cJSON_AddStringToObject(out, "object", "list");
		cJSON_AddItemToObject(out, "data", f->data);
		f->data = NULL;
		char *body = cJSON_PrintUnformatted(out);
		cJSON_Delete(out);
		creq_reply(f->r, 200, "application/json", NULL, body, strlen(body));
		free(body);
	}
	cJSON_Delete(f->data);
	free(f);
}

static const struct upcall_ops models_ops = {models_head, models_data, models_done};

static void models_union(struct router *rt, struct creq *r)
{
	struct models_fan *f = xcalloc(1, sizeof *f);
	f->r = r;
	f->data = cJSON_CreateArray();
	const char *auth = keys_mode(rt) ? NULL : creq_header(r, "Authorization");
	f->pending = 1; /* held while starting, so that a synchronous finish cannot free f */
	creq_on_gone(r, models_gone, f);
	for (int i = 0; i < rt->nups; i++) {
		f->calls[i] = (struct models_call){f, i};
		f->pending++;
		if (!upstream_call(&rt->ups[i], "GET", "/v1/models", NULL, 0, auth, NULL, 0, &models_ops, &f->calls[i]))
			f->pending--;
	}
	models_release(f);
}

/* Per upstream: sequences in flight and capacity, and how fresh its own load signals are. The
 * worker that polls (worker 0, or each one with per_worker queues) holds the signals. */
static void upstream_load_metrics(struct sbuf *b, struct router *rt, struct router *const *peers, int npeers)
{
	sbuf_printf(b, "# HELP carpool_upstream_sequences Sequences carpool has in flight on the upstream now.\n"
		       "# TYPE carpool_upstream_sequences gauge\n");
	for (int i = 0; i < rt->nups; i++) {
		unsigned n = 0;
		for (int p = 0; p < npeers; p++)
			n += CNT_GET(peers[p]->ups[i].seqs);
		sbuf_printf(b, "carpool_upstream_sequences{upstream=\"%s\"} %u\n", rt->ups[i].cfg->url, n);
	}
	sbuf_printf(b, "# HELP carpool_upstream_sequence_capacity Sequences the upstream decodes at once "
		       "(max_sequences, or learned from it; 0: unknown, unbounded).\n"
		       "# TYPE carpool_upstream_sequence_capacity gauge\n");
	for (int i = 0; i < rt->nups; i++) {
		unsigned cap = 0;
		for (int p = 0; p < npeers; p++)
			if (upstream_capacity(&peers[p]->ups[i]) > cap)
				cap = upstream_capacity(&peers[p]->ups[i]);
		sbuf_printf(b, "carpool_upstream_sequence_capacity{upstream=\"%s\"} %u\n", rt->ups[i].cfg->url, cap);
	}
	sbuf_printf(b, "# HELP carpool_upstream_load_signal_age_seconds Age of the upstream's last load figures "
		       "(-1: none fresh; carpool counts its load from its own calls).\n"
		       "# TYPE carpool_upstream_load_signal_age_seconds gauge\n");
	uint64_t now = now_us();
	for (int i = 0; i < rt->nups; i++) {
		double age = -1;
		for (int p = 0; p < npeers; p++) {
			const struct upstream *u = &peers[p]->ups[i];
			uint64_t at = CNT_GET(u->sig_at);
			if (CNT_GET(u->sig_fresh) && at && (age < 0 || (double)(now - at) / 1e6 < age))
				age = now > at ? (double)(now - at) / 1e6 : 0;
		}
		sbuf_printf(b, "carpool_upstream_load_signal_age_seconds{upstream=\"%s\"} %.3f\n", rt->ups[i].cfg->url, age);
	}
}

/* --- local endpoints ---------------------------------------------------------------------------- */

/* Prometheus text. With several workers the figures are totals over all of them, read without
 * locks: each counter is written by its own worker only, with relaxed atomic stores (CNT_ADD), and
 * read here with relaxed atomic loads (CNT_GET). */
static void metrics(struct router *rt, struct creq *r)
{
	struct router *self[1] = {rt};
	struct router **peers = rt->peers ? rt->peers : self;
	int npeers = rt->peers ? rt->npeers : 1;
	struct batcher_stats tot = {0};
	unsigned long passthrough = 0, limited = 0, reloads = 0, reload_failures = 0;
	for (int p = 0; p < npeers; p++) {
		const struct batcher_stats xs = peers[p]->bt ? batcher_stats(peers[p]->bt) : (struct batcher_stats){0};
		const struct batcher_stats *x = &xs;
		tot.requests += x->requests;
		tot.prompts += x->prompts;
		tot.calls += x->calls;
		tot.call_prompts += x->call_prompts;
		tot.bisections += x->bisections;
		tot.retries += x->retries;
		tot.upstream_errors += x->upstream_errors;
		tot.gone += x->gone;
		tot.active += x->active;
		passthrough += CNT_GET(peers[p]->passthrough);
		limited += CNT_GET(peers[p]->limited);
		reloads += CNT_GET(peers[p]->reloads);
		reload_failures += CNT_GET(peers[p]->reload_failures);
	}
	const struct batcher_stats *st = &tot;
	struct sbuf b = {0};
	sbuf_printf(&b, "# HELP carpool_requests_total Client completion requests accepted for batching.\n"
			"# TYPE carpool_requests_total counter\ncarpool_requests_total %lu\n", st->requests);
	sbuf_printf(&b, "# HELP carpool_prompts_total Prompts in those requests.\n"
			"# TYPE carpool_prompts_total counter\ncarpool_prompts_total %lu\n", st->prompts);
	sbuf_printf(&b, "# HELP carpool_upstream_calls_total Batched upstream calls sent.\n"
			"# TYPE carpool_upstream_calls_total counter\ncarpool_upstream_calls_total %lu\n", st->calls);
	sbuf_printf(&b, "# HELP carpool_upstream_call_prompts_total Prompts sent in batched upstream calls.\n"
			"# TYPE carpool_upstream_call_prompts_total counter\ncarpool_upstream_call_prompts_total %lu\n",
		    st->call_prompts);
	sbuf_printf(&b, "# HELP carpool_bisections_total Refused batches re-sent in halves.\n"
			"# TYPE carpool_bisections_total counter\ncarpool_bisections_total %lu\n", st->bisections);
	sbuf_printf(&b, "# HELP carpool_retries_total Upstream calls retried before any byte reached a client.\n"
			"# TYPE carpool_retries_total counter\ncarpool_retries_total %lu\n", st->retries);
	sbuf_printf(&b, "# HELP carpool_upstream_errors_total Upstream calls that failed.\n"
			"# TYPE carpool_upstream_errors_total counter\ncarpool_upstream_errors_total %lu\n",
		    st->upstream_errors);
	sbuf_printf(&b, "# HELP carpool_clients_gone_total Clients that left before their answer ended.\n"
			"# TYPE carpool_clients_gone_total counter\ncarpool_clients_gone_total %lu\n", st->gone);
	sbuf_printf(&b, "# HELP carpool_requests_active Requests queued or streaming now.\n"
			"# TYPE carpool_requests_active gauge\ncarpool_requests_active %lu\n", st->active);
	sbuf_printf(&b, "# HELP carpool_passthrough_total Requests forwarded unchanged.\n"
			"# TYPE carpool_passthrough_total counter\ncarpool_passthrough_total %lu\n", passthrough);
	sbuf_printf(&b, "# HELP carpool_key_limited_total Requests refused with 429 by a client key's limits.\n"
			"# TYPE carpool_key_limited_total counter\ncarpool_key_limited_total %lu\n", limited);
	sbuf_printf(&b, "# HELP carpool_config_reloads_total Successful config reloads (SIGHUP).\n"
			"# TYPE carpool_config_reloads_total counter\ncarpool_config_reloads_total %lu\n", reloads);
	sbuf_printf(&b, "# HELP carpool_config_reload_failures_total Reloads refused because the new file was bad.\n"
			"# TYPE carpool_config_reload_failures_total counter\ncarpool_config_reload_failures_total %lu\n",
		    reload_failures);
	sbuf_printf(&b, "# HELP carpool_upstream_inflight Upstream calls open now.\n"
			"# TYPE carpool_upstream_inflight gauge\n");
	for (int i = 0; i < rt->nups; i++) {
		unsigned inflight = 0;
		for (int p = 0; p < npeers; p++)
			inflight += CNT_GET(peers[p]->ups[i].inflight);
		sbuf_printf(&b, "carpool_upstream_inflight{upstream=\"%s\"} %u\n", rt->ups[i].cfg->url, inflight);
	}
	upstream_load_metrics(&b, rt, peers, npeers);
	static const struct {
		const char *name, *help;
		size_t off; /* of an unsigned long counter in struct upstream; 0: the healthy gauge */
	} per[] = {
		{"carpool_upstream_http_calls_total", "HTTP calls made to the upstream (batches, pass-through, probes).",
		 offsetof(struct upstream, calls)},
		{"carpool_upstream_failures_total", "Upstream calls that failed (connect, timeout, broken).",
		 offsetof(struct upstream, errors)},
		{"carpool_upstream_retries_total", "Batches retried after this upstream failed them.",
		 offsetof(struct upstream, retries_in)},
		{"carpool_upstream_ejections_total", "Times the upstream was ejected after repeated failures.",
		 offsetof(struct upstream, ejected_total)},
		{"carpool_upstream_conn_reused_total", "Calls sent on a kept-alive (reused) connection.",
		 offsetof(struct upstream, conn_reused)},
		{"carpool_upstream_conn_closed_by_server_total",
		 "Kept-alive connections the server closed: found closed before reuse, or closed under a call before any answer byte.",
		 offsetof(struct upstream, conn_server_closed)},
		{"carpool_upstream_resent_total",
		 "Calls sent again on a new connection because the server closed the reused one before answering (not failures).",
		 offsetof(struct upstream, resent)},
		{"carpool_upstream_conn_idle_closed_total",
		 "Idle connections carpool closed (keepalive_ms, or the server's Keep-Alive timeout).",
		 offsetof(struct upstream, conn_idle_expired)},
		{"carpool_upstream_healthy", "1 if the upstream is in service.", 0},
	};
	for (size_t k = 0; k < sizeof per / sizeof per[0]; k++) {
		sbuf_printf(&b, "# HELP %s %s\n# TYPE %s %s\n", per[k].name, per[k].help, per[k].name,
			    per[k].off ? "counter" : "gauge");
		for (int i = 0; i < rt->nups; i++) {
			struct upstream *u = &rt->ups[i];
			unsigned long v = 0;
			for (int p = 0; p < npeers && per[k].off; p++)
				v += CNT_GET(*(unsigned long *)((char *)&peers[p]->ups[i] + per[k].off));
			if (!per[k].off)
				v = upstream_healthy(u);
			sbuf_printf(&b, "%s{upstream=\"%s\"} %lu\n", per[k].name, u->cfg->url, v);
		}
	}
	sbuf_printf(&b, "# HELP carpool_upstream_ready 1 if the upstream counts for /readyz: it answered and is not "
			"failing past its grace period.\n# TYPE carpool_upstream_ready gauge\n");
	for (int i = 0; i < rt->nups; i++)
		sbuf_printf(&b, "carpool_upstream_ready{upstream=\"%s\"} %d\n", rt->ups[i].cfg->url,
			    upstream_ready(&rt->ups[i]));
	sbuf_printf(&b, "# HELP carpool_upstream_failures_by_cause_total Failed upstream calls by cause.\n"
			"# TYPE carpool_upstream_failures_by_cause_total counter\n");
	for (int i = 0; i < rt->nups; i++)
		for (int e = UPE_CONNECT; e <= UPE_BROKEN; e++) {
			unsigned long v = 0;
			for (int p = 0; p < npeers; p++)
				v += CNT_GET(peers[p]->ups[i].errors_by[e]);
			sbuf_printf(&b, "carpool_upstream_failures_by_cause_total{upstream=\"%s\",cause=\"%s\"} %lu\n",
				    rt->ups[i].cfg->url, upcall_error_name((enum upcall_error)e), v);
		}
	struct metrics *all[64];
	int nm = 0;
	for (int p = 0; p < npeers && nm < 64; p++)
		if (peers[p]->metrics)
			all[nm++] = peers[p]->metrics;
	metrics_render(&b, all, nm);
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
		CNT_ADD(rt->refused, 1);
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
		models_union(rt, r);
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
	passthrough(rt, r, up);
}
