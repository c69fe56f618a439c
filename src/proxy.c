/* proxy: what carpool forwards without batching - every other path, passed through to one upstream
 * and its answer relayed as it comes, and GET /v1/models asked of every upstream, answered with the
 * union of their lists. */
#include "carpool/proxy.h"
#include "carpool/http.h"
#include "carpool/server.h"
#include "carpool/sink.h"
#include "carpool/upstream.h"

#include <cjson/cJSON.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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

void proxy_pass(struct creq *r, struct upstream *up, const char *auth)
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
	struct pass *p = xcalloc(1, sizeof *p);
	p->r = &r->sink;
	p->path = r->path;
	r->sink.note.upstream = up->cfg->url;
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

void proxy_models(struct creq *r, struct upstream *ups, int nups, const char *auth)
{
	struct models_fan *f = xcalloc(1, sizeof *f);
	f->r = r;
	f->data = cJSON_CreateArray();
	f->pending = 1; /* held while starting, so that a synchronous finish cannot free f */
	creq_on_gone(r, models_gone, f);
	for (int i = 0; i < nups; i++) {
		f->calls[i] = (struct models_call){f, i};
		f->pending++;
		if (!upstream_call(&ups[i], "GET", "/v1/models", NULL, 0, auth, NULL, 0, &models_ops, &f->calls[i]))
			f->pending--;
	}
	models_release(f);
}
