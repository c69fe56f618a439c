/* carpool-sim: a SIMULATED OpenAI-compatible LLM upstream, for carpool's tests, benchmarks and demo.
 *
 * THIS IS A SIMULATOR, NOT A LANGUAGE MODEL. Every "token" it returns is a synthetic string produced
 * deterministically by bench/simgen.c (see bench/simgen.h for the specification), so a test can
 * predict the exact output of every prompt.
 *
 * It mimics the wire format of three kinds of servers (--dialect): OpenAI, vLLM and llama.cpp
 * (b4748, see tests/transcripts/llamacpp-b4748/). Decoding is modelled like a continuous-batching
 * GPU server: one global "stepper" advances every active sequence of every in-flight call by one token
 * per step; a step costs step_ms plus step_us_per_seq for every sequence in it, and every call first
 * pays call_ms. --slots limits how many sequences decode at once: the rest wait in one FIFO in arrival
 * order and each takes a slot the step after one frees, whatever call it belongs to (continuous
 * batching, like vLLM; not a whole call at a time). --answer-tokens sets the range of answer lengths.
 * --burst makes a step give each active sequence all its remaining tokens at once, one sequence after
 * the other, so that a sequence's whole answer leaves in one write (a client's answer in one read).
 *
 * --rpm R models a hosted API's request budget: at most R POSTs to /v1/ in any 60 s; the others get 429.
 *
 * Magic substrings in a string prompt: "INVALID" (the whole call fails with 400 before any output),
 * "MIDERR" (an error after 2 steps of output), "CRASH" (the TCP connection is closed abruptly after
 * 2 steps of output). See bench/SIM.md.
 */
#include "simgen.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

#define MAX_N 128
#define MAX_DIMS 65536
#define FINGERPRINT "b4748-sim"
#define DEFAULT_MODEL "sim-model"
#define BURST_MAX_WRITE (4 << 20) /* --burst: the most one write() of a streamed answer carries */

enum dialect { D_OPENAI, D_VLLM, D_LLAMACPP };
static const char *const dialect_names[] = { "openai", "vllm", "llamacpp" };

enum kind { K_COMPLETION, K_CHAT, K_EMBED };
enum seq_state { S_IDLE, S_QUEUED, S_ACTIVE, S_DONE };

struct call;

struct prompt {
	char *key; /* string bytes, or token ids joined with ',' */
	size_t keylen;
	unsigned ptoks;
	bool is_str;
};

struct seq {
	struct call *call;
	unsigned p, j;
	uint32_t seed;
	unsigned m, gen;
	const char *finish;
	enum seq_state state;
	TAILQ_ENTRY(seq) qlink; /* global wait queue (slots) */
};

struct call {
	TAILQ_ENTRY(call) link;
	struct evhttp_request *req; /* NULL once libevent freed it */
	struct evhttp_connection *conn;
	enum kind kind;
	char id[64];
	char *model;
	long long created;
	bool stream, include_usage, continuous;
	unsigned n, nprompts, nseqs, remaining;
	struct prompt *prompts;
	struct seq *seqs;
	unsigned steps_out;
	bool miderr, crash;
	bool started;  /* evhttp_send_reply_start done */
	bool running;  /* sequences are in the engine */
	bool busy;     /* the stepper is working on it */
	bool closed;   /* connection closed while busy */
	bool crashing; /* we are closing the connection on purpose */
	bool counted;  /* counted in stats.inflight */
	struct event *timer;
	struct event *closewatch; /* peer-close detection while no reply has started */
	char *body; /* embeddings: the prepared response */
	struct evbuffer *out;
};

TAILQ_HEAD(call_list, call);
TAILQ_HEAD(seq_queue, seq);

static struct {
	char host[256];
	char port[16];
	enum dialect dialect;
	double step_ms, call_ms, step_us_per_seq;
	long slots, max_inputs, rpm;
	const char *port_file, *tls_cert, *tls_key;
	/* connection handling (see "connections" below) */
	long ka_timeout_s, ka_max; /* --keep-alive T[,M]: advertised (and T enforced); -1: not sent */
	double idle_close_ms;	   /* --idle-close-ms: close a connection idle this long (0: never) */
	enum { CLOSE_NO, CLOSE_FLUSHED, CLOSE_NEXT } close_after_stream;
	bool drop_reused;
	long max_conns, backlog;
	unsigned answer_min, answer_max; /* natural answer lengths (simgen_length_in) */
	bool burst; /* --burst: a step gives each active sequence all its remaining tokens */
} cfg = { "127.0.0.1", "0", D_VLLM, 5.0, 1.0, 2.0, 0, 0, 0, NULL, NULL, NULL, -1, 100, 0, CLOSE_NO, false, 0, 4096, SIMGEN_ANSWER_MIN, SIMGEN_ANSWER_MAX, false };

static struct event_base *g_base;
static struct evhttp *g_http;
static SSL_CTX *g_ssl_ctx;
static struct call_list g_calls = TAILQ_HEAD_INITIALIZER(g_calls);
static struct seq_queue g_waitq = TAILQ_HEAD_INITIALIZER(g_waitq);
static unsigned long g_active;     /* sequences decoding now */
static unsigned long g_waiting;    /* sequences in g_waitq */
static struct event *g_step_timer;
static bool g_step_pending, g_in_step;
static unsigned long g_call_number;
static long long g_start_time;
/* --rpm: when the last cfg.rpm accepted calls came (monotonic seconds), a ring; g_budget_n used */
static double *g_budget;
static unsigned long g_budget_n, g_budget_head;

static struct {
	unsigned long calls, completion_calls, embedding_calls, chat_calls, prompts, max_prompts;
	unsigned long inflight, max_inflight, disconnects;
	unsigned long max_running, max_waiting; /* peaks of g_active and g_waiting */
	unsigned long rate_limited;             /* calls refused with 429 (--rpm) */
	cJSON *auth;
	cJSON *requests; /* the request log (created on first use) */
	unsigned long logged, unlogged; /* its entries (MAX_LOGGED_REQUESTS at most), requests past that */
} stats;

#define MAX_LOGGED_REQUESTS 1000
static cJSON *g_logged; /* the log entry of the request being handled, NULL when not logged */

/* ------------------------------------------------------------------ helpers */

static void *xmalloc(size_t n)
{
	void *p = calloc(1, n ? n : 1);
	if (!p) {
		fprintf(stderr, "carpool-sim: out of memory\n");
		exit(1);
	}
	return p;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s);
	char *p = xmalloc(n + 1);
	memcpy(p, s, n + 1);
	return p;
}

static const char *server_name(void)
{
	return cfg.dialect == D_LLAMACPP ? "llama.cpp" : "carpool-sim";
}

static const char *json_ctype(void)
{
	return cfg.dialect == D_LLAMACPP ? "application/json; charset=utf-8" : "application/json";
}

static bool json_is_int(const cJSON *v, long long *out)
{
	if (!cJSON_IsNumber(v))
		return false;
	double d = v->valuedouble;
	if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0)
		return false;
	if (out)
		*out = (long long)d;
	return true;
}

/* A JSON number that parses back to exactly d (cJSON's printer may drop the last bit). */
static cJSON *exact_number(double d)
{
	char buf[40];
	for (int prec = 15; prec <= 17; prec++) {
		snprintf(buf, sizeof buf, "%.*g", prec, d);
		if (strtod(buf, NULL) == d)
			break;
	}
	return cJSON_CreateRaw(buf);
}

static void send_body(struct evhttp_request *req, int code, const char *ctype, const char *body)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	evhttp_add_header(h, "Content-Type", ctype);
	struct evbuffer *b = evbuffer_new();
	evbuffer_add(b, body, strlen(body));
	evhttp_send_reply(req, code, NULL, b);
	evbuffer_free(b);
}

static void send_json(struct evhttp_request *req, int code, cJSON *obj)
{
	char *s = cJSON_PrintUnformatted(obj);
	send_body(req, code, json_ctype(), s);
	free(s);
}

static const char *error_type(int code)
{
	switch (code) {
	case 400:
		return "invalid_request_error";
	case 404:
		return "not_found_error";
	case 429:
		return "requests"; /* OpenAI's type for a request-rate limit */
	default:
		return "server_error";
	}
}

/* The dialect's error object: {"error":{...}}. param may be NULL. */
static cJSON *error_json(int code, const char *msg, const char *param)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *e = cJSON_AddObjectToObject(root, "error");
	if (cfg.dialect == D_LLAMACPP) {
		cJSON_AddNumberToObject(e, "code", code);
		cJSON_AddStringToObject(e, "message", msg);
		cJSON_AddStringToObject(e, "type", error_type(code));
	} else {
		cJSON_AddStringToObject(e, "message", msg);
		cJSON_AddStringToObject(e, "type", error_type(code));
		if (param)
			cJSON_AddStringToObject(e, "param", param);
		else
			cJSON_AddNullToObject(e, "param");
		cJSON_AddNullToObject(e, "code");
	}
	return root;
}

static void send_error(struct evhttp_request *req, int code, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void send_error(struct evhttp_request *req, int code, const char *param, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	cJSON *e = error_json(code, msg, param);
	send_json(req, code, e);
	cJSON_Delete(e);
}

/* ------------------------------------------------------------------ prompt parsing */

static void free_prompts(struct prompt *ps, unsigned n)
{
	if (!ps)
		return;
	for (unsigned i = 0; i < n; i++)
		free(ps[i].key);
	free(ps);
}

static void prompt_from_string(struct prompt *p, const char *s)
{
	p->keylen = strlen(s);
	p->key = xmalloc(p->keylen + 1);
	memcpy(p->key, s, p->keylen + 1);
	p->ptoks = simgen_prompt_tokens_text(p->keylen);
	p->is_str = true;
}

/* arr: an array of integers (checked by the caller). */
static void prompt_from_ids(struct prompt *p, const cJSON *arr)
{
	size_t cap = 32, len = 0;
	char *k = xmalloc(cap);
	unsigned count = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		long long v = 0;
		json_is_int(e, &v);
		char tmp[32];
		int w = snprintf(tmp, sizeof tmp, "%s%lld", count ? "," : "", v);
		if (len + (size_t)w + 1 > cap) {
			while (len + (size_t)w + 1 > cap)
				cap *= 2;
			char *nk = realloc(k, cap);
			if (!nk) {
				fprintf(stderr, "carpool-sim: out of memory\n");
				exit(1);
			}
			k = nk;
		}
		memcpy(k + len, tmp, (size_t)w + 1);
		len += (size_t)w;
		count++;
	}
	p->key = k;
	p->keylen = len;
	p->ptoks = count;
	p->is_str = false;
}

static bool all_ints(const cJSON *arr)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		if (!json_is_int(e, NULL))
			return false;
	}
	return true;
}

static bool any_number(const cJSON *arr)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
	{
		if (cJSON_IsNumber(e))
			return true;
	}
	return false;
}

/* Parses a prompt/input value. Returns 0, or -1 with a message in err. */
static int parse_prompts(const cJSON *v, const char *name, struct prompt **out, unsigned *count, char *err,
			 size_t errlen)
{
	*out = NULL;
	*count = 0;
	if (!v || cJSON_IsNull(v)) {
		snprintf(err, errlen, "\"%s\" is required", name);
		return -1;
	}
	if (cJSON_IsString(v)) {
		struct prompt *ps = xmalloc(sizeof *ps);
		prompt_from_string(&ps[0], v->valuestring);
		*out = ps;
		*count = 1;
		return 0;
	}
	if (!cJSON_IsArray(v)) {
		snprintf(err, errlen,
			 "\"%s\" must be a string, an array of strings, an array of token ids or an array of "
			 "token-id arrays",
			 name);
		return -1;
	}
	int n = cJSON_GetArraySize(v);
	if (n == 0) {
		snprintf(err, errlen, "\"%s\" must not be empty", name);
		return -1;
	}
	if (any_number(v)) {
		if (!all_ints(v)) {
			snprintf(err, errlen, "\"%s\" must be a list of integer token ids when it holds numbers", name);
			return -1;
		}
		struct prompt *ps = xmalloc(sizeof *ps);
		prompt_from_ids(&ps[0], v);
		*out = ps;
		*count = 1;
		return 0;
	}
	struct prompt *ps = xmalloc(sizeof *ps * (size_t)n);
	unsigned i = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, v)
	{
		if (cJSON_IsString(e)) {
			prompt_from_string(&ps[i], e->valuestring);
		} else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) > 0 && all_ints(e)) {
			prompt_from_ids(&ps[i], e);
		} else {
			free_prompts(ps, i);
			snprintf(err, errlen, "element %u of \"%s\" must be a string or a non-empty list of integer token ids",
				 i, name);
			return -1;
		}
		i++;
	}
	*out = ps;
	*count = i;
	return 0;
}

static int find_magic(const struct prompt *ps, unsigned n, const char *word)
{
	for (unsigned i = 0; i < n; i++)
		if (ps[i].is_str && memmem(ps[i].key, ps[i].keylen, word, strlen(word)))
			return (int)i;
	return -1;
}

/* ------------------------------------------------------------------ stats */

/* Every request but /stats gets an entry {method, path, auth} in /stats "requests" (auth "" when
 * the header is absent), so that a test can tell which credential reached which route; and the
 * request-id, trace and forwarding headers it carried, when it carried them (x-request-id,
 * traceparent, tracestate, x-forwarded-for, x-forwarded-proto). */
static void log_request(struct evhttp_request *req, const char *path)
{
	static const struct {
		enum evhttp_cmd_type cmd;
		const char *name;
	} methods[] = {
		{EVHTTP_REQ_GET, "GET"}, {EVHTTP_REQ_POST, "POST"}, {EVHTTP_REQ_HEAD, "HEAD"}, {EVHTTP_REQ_PUT, "PUT"},
		{EVHTTP_REQ_DELETE, "DELETE"}, {EVHTTP_REQ_OPTIONS, "OPTIONS"}, {EVHTTP_REQ_PATCH, "PATCH"},
	};
	g_logged = NULL;
	if (!strcmp(path, "/stats") || !strcmp(path, "/stats/reset"))
		return;
	if (!stats.requests)
		stats.requests = cJSON_CreateArray();
	if (stats.logged >= MAX_LOGGED_REQUESTS) {
		stats.unlogged++;
		return;
	}
	stats.logged++;
	const char *method = "?";
	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		if (methods[i].cmd == evhttp_request_get_command(req))
			method = methods[i].name;
	const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	g_logged = cJSON_CreateObject();
	cJSON_AddStringToObject(g_logged, "method", method);
	cJSON_AddStringToObject(g_logged, "path", path);
	cJSON_AddStringToObject(g_logged, "auth", auth ? auth : "");
	static const char *const traced[] = {"X-Request-Id", "traceparent", "tracestate", "X-Forwarded-For",
					     "X-Forwarded-Proto"};
	for (size_t i = 0; i < sizeof traced / sizeof traced[0]; i++) {
		const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), traced[i]);
		if (v) {
			char key[32];
			size_t k = 0;
			for (; traced[i][k] && k < sizeof key - 1; k++)
				key[k] = (char)tolower((unsigned char)traced[i][k]);
			key[k] = '\0';
			cJSON_AddStringToObject(g_logged, key, v);
		}
	}
	cJSON_AddItemToArray(stats.requests, g_logged);
}

/* Counts a call that passed validation; its prompt keys (token prompts: ids joined with ",") go into
 * its log entry. */
static void stats_count_call(struct evhttp_request *req, enum kind kind, const struct prompt *ps, unsigned prompts)
{
	if (g_logged) {
		cJSON *arr = cJSON_AddArrayToObject(g_logged, "prompts");
		for (unsigned i = 0; i < prompts; i++)
			cJSON_AddItemToArray(arr, cJSON_CreateString(ps[i].key));
	}
	if (kind == K_CHAT) {
		stats.chat_calls++;
		return;
	}
	stats.calls++;
	if (kind == K_COMPLETION)
		stats.completion_calls++;
	else
		stats.embedding_calls++;
	stats.prompts += prompts;
	if (prompts > stats.max_prompts)
		stats.max_prompts = prompts;
	stats.inflight++;
	if (stats.inflight > stats.max_inflight)
		stats.max_inflight = stats.inflight;
	const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	if (!auth)
		auth = "";
	cJSON *item = cJSON_GetObjectItemCaseSensitive(stats.auth, auth);
	if (item)
		cJSON_SetNumberValue(item, item->valuedouble + 1);
	else
		cJSON_AddNumberToObject(stats.auth, auth, 1);
}

static void conn_stats_json(cJSON *o);
static void conn_stats_reset(void);

static void handle_stats(struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "calls", (double)stats.calls);
	cJSON_AddNumberToObject(o, "completion_calls", (double)stats.completion_calls);
	cJSON_AddNumberToObject(o, "embedding_calls", (double)stats.embedding_calls);
	cJSON_AddNumberToObject(o, "chat_calls", (double)stats.chat_calls);
	cJSON_AddNumberToObject(o, "prompts", (double)stats.prompts);
	cJSON_AddNumberToObject(o, "max_prompts_per_call", (double)stats.max_prompts);
	cJSON_AddNumberToObject(o, "inflight", (double)stats.inflight);
	cJSON_AddNumberToObject(o, "max_inflight", (double)stats.max_inflight);
	cJSON_AddNumberToObject(o, "disconnects", (double)stats.disconnects);
	cJSON_AddNumberToObject(o, "running", (double)g_active);
	cJSON_AddNumberToObject(o, "waiting", (double)g_waiting);
	cJSON_AddNumberToObject(o, "max_running", (double)stats.max_running);
	cJSON_AddNumberToObject(o, "max_waiting", (double)stats.max_waiting);
	cJSON_AddNumberToObject(o, "rate_limited", (double)stats.rate_limited);
	cJSON_AddItemToObject(o, "auth", cJSON_Duplicate(stats.auth, 1));
	cJSON_AddItemToObject(o, "requests", stats.requests ? cJSON_Duplicate(stats.requests, 1) : cJSON_CreateArray());
	cJSON_AddNumberToObject(o, "unlogged_requests", (double)stats.unlogged);
	conn_stats_json(o);
	send_json(req, 200, o);
	cJSON_Delete(o);
}

static void handle_stats_reset(struct evhttp_request *req)
{
	unsigned long inflight = stats.inflight;
	cJSON_Delete(stats.auth);
	cJSON_Delete(stats.requests);
	memset(&stats, 0, sizeof stats);
	stats.auth = cJSON_CreateObject();
	stats.inflight = inflight; /* still really in flight */
	stats.max_inflight = inflight;
	conn_stats_reset();
	stats.max_running = g_active;
	stats.max_waiting = g_waiting;
	send_body(req, 200, json_ctype(), "{\"status\":\"ok\"}");
}

/* ------------------------------------------------------------------ engine */

static void engine_kick(void);
static void sconn_attach(struct evhttp_connection *conn, struct call *c);

static void release_seqs(struct call *c)
{
	for (unsigned i = 0; i < c->nseqs; i++) {
		struct seq *s = &c->seqs[i];
		if (s->state == S_QUEUED) {
			TAILQ_REMOVE(&g_waitq, s, qlink);
			g_waiting--;
		} else if (s->state == S_ACTIVE)
			g_active--;
		if (s->state != S_DONE)
			s->state = S_DONE;
	}
	c->running = false;
}

/* Frees our bookkeeping; never touches c->req. */
static void free_call(struct call *c)
{
	release_seqs(c);
	TAILQ_REMOVE(&g_calls, c, link);
	if (c->counted)
		stats.inflight--;
	if (c->timer)
		event_free(c->timer);
	if (c->closewatch)
		event_free(c->closewatch);
	if (c->out)
		evbuffer_free(c->out);
	free_prompts(c->prompts, c->nprompts);
	free(c->seqs);
	free(c->model);
	free(c->body);
	free(c);
	engine_kick();
}

/* The call is over and its reply has been (or is about to be) completed by us. */
static void detach_conn(struct call *c)
{
	if (c->conn)
		sconn_attach(c->conn, NULL);
	c->conn = NULL;
}

/* After the connection went away: hand the request back to libevent (which frees it) and free the call. */
static void finish_closed(struct call *c)
{
	if (!c->crashing)
		stats.disconnects++;
	if (c->req) {
		/* A detached request (evcon == NULL) is ours: completing it frees it. */
		if (c->started)
			evhttp_send_reply_end(c->req);
		else
			evhttp_send_reply(c->req, 500, NULL, NULL);
		c->req = NULL;
	}
	c->conn = NULL;
	free_call(c);
}

/* The connection carrying c closed (from the connection's own close callback). */
static void on_close(struct evhttp_connection *conn, void *arg)
{
	struct call *c = arg;
	(void)conn;
	c->conn = NULL;
	/* If libevent detached the request from the dying connection it is ours to complete;
	 * otherwise the connection frees it right after this callback. */
	if (c->req && evhttp_request_get_connection(c->req) != NULL)
		c->req = NULL;
	if (c->busy) {
		c->closed = true;
		return;
	}
	finish_closed(c);
}

static void schedule_step(void)
{
	if (g_step_pending || g_active == 0)
		return;
	struct timeval tv = { 0, 0 };
	if (cfg.step_ms > 0) {
		double us = cfg.step_ms * 1000.0 + cfg.step_us_per_seq * (double)g_active;
		long long u = (long long)llround(us);
		tv.tv_sec = (time_t)(u / 1000000);
		tv.tv_usec = (suseconds_t)(u % 1000000);
	}
	evtimer_add(g_step_timer, &tv);
	g_step_pending = true;
}

static void engine_kick(void)
{
	if (g_in_step)
		return;
	while (!TAILQ_EMPTY(&g_waitq) && (cfg.slots <= 0 || g_active < (unsigned long)cfg.slots)) {
		struct seq *s = TAILQ_FIRST(&g_waitq);
		TAILQ_REMOVE(&g_waitq, s, qlink);
		g_waiting--;
		s->state = S_ACTIVE;
		g_active++;
	}
	if (g_active > stats.max_running)
		stats.max_running = g_active;
	schedule_step();
}

static void usage_obj(cJSON *parent, const char *name, unsigned long prompt, unsigned long completion,
		      bool llama_order)
{
	cJSON *u = cJSON_AddObjectToObject(parent, name);
	if (llama_order) {
		cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
		cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt);
	} else {
		cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt);
		cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
	}
	cJSON_AddNumberToObject(u, "total_tokens", (double)(prompt + completion));
}

static void timings_obj(cJSON *parent, unsigned prompt_n, unsigned predicted_n)
{
	cJSON *t = cJSON_AddObjectToObject(parent, "timings");
	cJSON_AddNumberToObject(t, "prompt_n", prompt_n);
	cJSON_AddNumberToObject(t, "predicted_n", predicted_n);
}

/* Adds the text generated so far by s to obj as the string name. */
static void add_full_text(cJSON *obj, const char *name, const struct seq *s)
{
	char *text = xmalloc((size_t)s->gen * SIMGEN_TOKEN_MAX + 1);
	size_t len = 0;
	for (unsigned i = 0; i < s->gen; i++)
		len += simgen_token(s->seed, i, text + len);
	cJSON_AddStringToObject(obj, name, text);
	free(text);
}

/* Sends one SSE event (prefix + JSON) as one HTTP chunk. */
static void send_event(struct call *c, const char *prefix, cJSON *obj)
{
	if (!c->req || c->closed || !c->started)
		return;
	char *s = cJSON_PrintUnformatted(obj);
	evbuffer_add_printf(c->out, "%s%s\n\n", prefix, s);
	free(s);
	evhttp_send_reply_chunk(c->req, c->out);
}

static void send_raw_event(struct call *c, const char *text)
{
	if (!c->req || c->closed || !c->started)
		return;
	evbuffer_add(c->out, text, strlen(text));
	evhttp_send_reply_chunk(c->req, c->out);
}

/* Header of an OpenAI/vLLM object: id, object, created, model. */
static cJSON *oai_head(const struct call *c, const char *object)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", c->id);
	cJSON_AddStringToObject(o, "object", object);
	cJSON_AddNumberToObject(o, "created", (double)c->created);
	cJSON_AddStringToObject(o, "model", c->model);
	return o;
}

static void llama_tail(cJSON *o, const struct call *c, const char *object)
{
	cJSON_AddNumberToObject(o, "created", (double)c->created);
	cJSON_AddStringToObject(o, "model", c->model);
	cJSON_AddStringToObject(o, "system_fingerprint", FINGERPRINT);
	cJSON_AddStringToObject(o, "object", object);
}

static void oai_choice_fields(cJSON *ch, const char *finish)
{
	cJSON_AddNullToObject(ch, "logprobs");
	if (finish)
		cJSON_AddStringToObject(ch, "finish_reason", finish);
	else
		cJSON_AddNullToObject(ch, "finish_reason");
	if (cfg.dialect == D_VLLM)
		cJSON_AddNullToObject(ch, "stop_reason");
}

/* Streams one generated token of sequence s (and, for llama.cpp, the extra final event). */
static void emit_token(struct call *c, struct seq *s, const char *tok, bool last)
{
	unsigned index = s->p * c->n + s->j;
	const struct prompt *pr = &c->prompts[s->p];
	if (c->kind == K_CHAT) {
		cJSON *o;
		cJSON *choices;
		if (cfg.dialect == D_LLAMACPP) {
			o = cJSON_CreateObject();
			choices = cJSON_AddArrayToObject(o, "choices");
		} else {
			o = oai_head(c, "chat.completion.chunk");
			choices = cJSON_AddArrayToObject(o, "choices");
		}
		cJSON *ch = cJSON_CreateObject();
		cJSON_AddItemToArray(choices, ch);
		if (cfg.dialect == D_LLAMACPP) {
			cJSON_AddNullToObject(ch, "finish_reason");
			cJSON_AddNumberToObject(ch, "index", 0);
			cJSON_AddStringToObject(cJSON_AddObjectToObject(ch, "delta"), "content", tok);
			cJSON_AddNumberToObject(o, "created", (double)c->created);
			cJSON_AddStringToObject(o, "id", c->id);
			cJSON_AddStringToObject(o, "model", c->model);
			cJSON_AddStringToObject(o, "system_fingerprint", FINGERPRINT);
			cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
		} else {
			cJSON_AddNumberToObject(ch, "index", 0);
			cJSON_AddStringToObject(cJSON_AddObjectToObject(ch, "delta"), "content", tok);
			cJSON_AddNullToObject(ch, "logprobs");
			cJSON_AddNullToObject(ch, "finish_reason");
		}
		send_event(c, "data: ", o);
		cJSON_Delete(o);
		if (last) {
			/* final chunk: empty delta + finish_reason */
			if (cfg.dialect == D_LLAMACPP) {
				o = cJSON_CreateObject();
				choices = cJSON_AddArrayToObject(o, "choices");
				ch = cJSON_CreateObject();
				cJSON_AddItemToArray(choices, ch);
				cJSON_AddStringToObject(ch, "finish_reason", s->finish);
				cJSON_AddNumberToObject(ch, "index", 0);
				cJSON_AddObjectToObject(ch, "delta");
				cJSON_AddNumberToObject(o, "created", (double)c->created);
				cJSON_AddStringToObject(o, "id", c->id);
				cJSON_AddStringToObject(o, "model", c->model);
				cJSON_AddStringToObject(o, "system_fingerprint", FINGERPRINT);
				cJSON_AddStringToObject(o, "object", "chat.completion.chunk");
				usage_obj(o, "usage", pr->ptoks, s->gen, true);
				timings_obj(o, pr->ptoks, s->gen);
			} else {
				o = oai_head(c, "chat.completion.chunk");
				choices = cJSON_AddArrayToObject(o, "choices");
				ch = cJSON_CreateObject();
				cJSON_AddItemToArray(choices, ch);
				cJSON_AddNumberToObject(ch, "index", 0);
				cJSON_AddObjectToObject(ch, "delta");
				cJSON_AddNullToObject(ch, "logprobs");
				cJSON_AddStringToObject(ch, "finish_reason", s->finish);
			}
			send_event(c, "data: ", o);
			cJSON_Delete(o);
		}
		return;
	}
	if (cfg.dialect == D_LLAMACPP) {
		cJSON *o = cJSON_CreateObject();
		cJSON *ch = cJSON_CreateObject();
		cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
		cJSON_AddStringToObject(ch, "text", tok);
		cJSON_AddNumberToObject(ch, "index", index);
		cJSON_AddNullToObject(ch, "logprobs");
		cJSON_AddNullToObject(ch, "finish_reason");
		llama_tail(o, c, "text_completion");
		cJSON_AddStringToObject(o, "id", c->id);
		send_event(c, "data: ", o);
		cJSON_Delete(o);
		if (last) {
			o = cJSON_CreateObject();
			ch = cJSON_CreateObject();
			cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
			cJSON_AddStringToObject(ch, "text", "");
			cJSON_AddNumberToObject(ch, "index", index);
			cJSON_AddNullToObject(ch, "logprobs");
			cJSON_AddStringToObject(ch, "finish_reason", s->finish);
			llama_tail(o, c, "text_completion");
			usage_obj(o, "usage", pr->ptoks, s->gen, true);
			cJSON_AddStringToObject(o, "id", c->id);
			timings_obj(o, pr->ptoks, s->gen);
			send_event(c, "data: ", o);
			cJSON_Delete(o);
		}
		return;
	}
	cJSON *o = oai_head(c, "text_completion");
	cJSON *ch = cJSON_CreateObject();
	cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
	cJSON_AddNumberToObject(ch, "index", index);
	cJSON_AddStringToObject(ch, "text", tok);
	oai_choice_fields(ch, last ? s->finish : NULL);
	if (cfg.dialect == D_VLLM && c->include_usage && c->continuous)
		usage_obj(o, "usage", pr->ptoks, s->gen, false);
	send_event(c, "data: ", o);
	cJSON_Delete(o);
}

static unsigned long total_prompt_tokens(const struct call *c)
{
	unsigned long t = 0;
	for (unsigned p = 0; p < c->nprompts; p++)
		t += c->prompts[p].ptoks;
	return t;
}

static unsigned long total_completion_tokens(const struct call *c)
{
	unsigned long t = 0;
	for (unsigned i = 0; i < c->nseqs; i++)
		t += c->seqs[i].gen;
	return t;
}

static cJSON *nonstream_body(struct call *c)
{
	if (c->kind == K_CHAT) {
		struct seq *s = &c->seqs[0];
		cJSON *o = oai_head(c, "chat.completion");
		cJSON *ch = cJSON_CreateObject();
		cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
		cJSON_AddNumberToObject(ch, "index", 0);
		cJSON *msg = cJSON_AddObjectToObject(ch, "message");
		cJSON_AddStringToObject(msg, "role", "assistant");
		add_full_text(msg, "content", s);
		cJSON_AddNullToObject(ch, "logprobs");
		cJSON_AddStringToObject(ch, "finish_reason", s->finish);
		usage_obj(o, "usage", c->prompts[0].ptoks, s->gen, false);
		if (cfg.dialect == D_LLAMACPP)
			cJSON_AddStringToObject(o, "system_fingerprint", FINGERPRINT);
		return o;
	}
	if (cfg.dialect == D_LLAMACPP) {
		cJSON *arr = c->nprompts > 1 ? cJSON_CreateArray() : NULL;
		cJSON *single = NULL;
		for (unsigned p = 0; p < c->nprompts; p++) {
			struct seq *s = &c->seqs[p * c->n];
			const struct prompt *pr = &c->prompts[p];
			cJSON *o = cJSON_CreateObject();
			cJSON *ch = cJSON_CreateObject();
			cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
			add_full_text(ch, "text", s);
			cJSON_AddNumberToObject(ch, "index", p);
			cJSON_AddNullToObject(ch, "logprobs");
			cJSON_AddStringToObject(ch, "finish_reason", s->finish);
			llama_tail(o, c, "text_completion");
			usage_obj(o, "usage", pr->ptoks, s->gen, true);
			cJSON_AddStringToObject(o, "id", c->id);
			timings_obj(o, pr->ptoks, s->gen);
			if (arr)
				cJSON_AddItemToArray(arr, o);
			else
				single = o;
		}
		return arr ? arr : single;
	}
	cJSON *o = oai_head(c, "text_completion");
	cJSON *choices = cJSON_AddArrayToObject(o, "choices");
	for (unsigned i = 0; i < c->nseqs; i++) { /* seqs are stored in index order */
		struct seq *s = &c->seqs[i];
		cJSON *ch = cJSON_CreateObject();
		cJSON_AddItemToArray(choices, ch);
		cJSON_AddNumberToObject(ch, "index", i);
		add_full_text(ch, "text", s);
		oai_choice_fields(ch, s->finish);
	}
	usage_obj(o, "usage", total_prompt_tokens(c), total_completion_tokens(c), false);
	return o;
}

static void sconn_stream_done(struct evhttp_connection *conn);

static void finish_call(struct call *c)
{
	if (c->stream) {
		if (c->include_usage && cfg.dialect != D_LLAMACPP) {
			cJSON *o = oai_head(c, c->kind == K_CHAT ? "chat.completion.chunk" : "text_completion");
			cJSON_AddArrayToObject(o, "choices");
			usage_obj(o, "usage", total_prompt_tokens(c), total_completion_tokens(c), false);
			send_event(c, "data: ", o);
			cJSON_Delete(o);
		}
		send_raw_event(c, "data: [DONE]\n\n");
		struct evhttp_connection *conn = c->conn;
		detach_conn(c);
		if (c->req)
			evhttp_send_reply_end(c->req);
		if (conn)
			sconn_stream_done(conn);
	} else {
		cJSON *o = nonstream_body(c);
		detach_conn(c);
		if (c->req)
			send_json(c->req, 200, o);
		cJSON_Delete(o);
	}
	c->req = NULL;
	free_call(c);
}

static void fail_miderr(struct call *c)
{
	static const char msg[] = "simulated mid-stream failure";
	release_seqs(c);
	if (c->stream) {
		if (cfg.dialect == D_LLAMACPP) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddNumberToObject(e, "code", 500);
			cJSON_AddStringToObject(e, "message", msg);
			cJSON_AddStringToObject(e, "type", "server_error");
			send_event(c, "error: ", e);
			cJSON_Delete(e);
		} else {
			cJSON *e = error_json(500, msg, NULL);
			send_event(c, "data: ", e);
			cJSON_Delete(e);
		}
		send_raw_event(c, "data: [DONE]\n\n");
		struct evhttp_connection *conn = c->conn;
		detach_conn(c);
		if (c->req)
			evhttp_send_reply_end(c->req);
		if (conn)
			sconn_stream_done(conn);
	} else {
		cJSON *e = error_json(500, msg, NULL);
		detach_conn(c);
		if (c->req)
			send_json(c->req, 500, e);
		cJSON_Delete(e);
	}
	c->req = NULL;
	free_call(c);
}

/* CRASH: once everything already queued has left, drop the connection like a dying server would. */
static void crash_check(evutil_socket_t fd, short what, void *arg)
{
	struct call *c = arg;
	(void)fd;
	(void)what;
	if (!c->conn)
		return;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
	if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		struct timeval tv = { 0, 1000 };
		evtimer_add(c->timer, &tv);
		return;
	}
	/* Closes the socket without a terminating chunk; on_close frees the call, libevent the request. */
	evhttp_connection_free(c->conn);
}

static void start_crash(struct call *c)
{
	release_seqs(c);
	c->crashing = true;
	if (c->timer)
		event_free(c->timer);
	c->timer = evtimer_new(g_base, crash_check, c);
	struct timeval tv = { 0, 0 };
	evtimer_add(c->timer, &tv);
}

/* One step of a call: the next token of each active sequence, in index order; with --burst each one's
 * remaining tokens back to back, so that a sequence's whole answer leaves in one write. */
static void step_call(struct call *c)
{
	bool emitted = false;
	c->busy = true;
	for (unsigned i = 0; i < c->nseqs; i++) {
		struct seq *s = &c->seqs[i];
		bool last = false;
		while (s->state == S_ACTIVE && !last) {
			char tok[SIMGEN_TOKEN_MAX];
			simgen_token(s->seed, s->gen, tok);
			s->gen++;
			last = s->gen >= s->m;
			if (last) {
				s->state = S_DONE;
				g_active--;
				c->remaining--;
			}
			emitted = true;
			if (c->stream)
				emit_token(c, s, tok, last);
			if (!cfg.burst)
				break;
		}
	}
	c->busy = false;
	if (emitted)
		c->steps_out++;
	if (c->closed) {
		finish_closed(c);
		return;
	}
	if ((c->miderr || c->crash) && (c->steps_out >= 2 || c->remaining == 0)) {
		if (c->miderr)
			fail_miderr(c);
		else
			start_crash(c);
		return;
	}
	if (c->remaining == 0)
		finish_call(c);
}

static void step_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	g_step_pending = false;
	g_in_step = true;
	struct call *c, *next;
	for (c = TAILQ_FIRST(&g_calls); c; c = next) {
		next = TAILQ_NEXT(c, link);
		if (c->running)
			step_call(c);
	}
	g_in_step = false;
	engine_kick();
}

static void start_stream_reply(struct call *c)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(c->req);
	evhttp_add_header(h, "Content-Type", "text/event-stream");
	evhttp_add_header(h, "Cache-Control", "no-cache");
	if (c->closewatch) { /* from now on libevent itself notices a close */
		event_free(c->closewatch);
		c->closewatch = NULL;
	}
	evhttp_send_reply_start(c->req, 200, "OK");
	c->started = true;
	if (cfg.burst) /* a whole answer in one write, not in libevent's default 16 KiB slices */
		bufferevent_set_max_single_write(evhttp_connection_get_bufferevent(c->conn), BURST_MAX_WRITE);
	if (c->kind == K_CHAT && cfg.dialect != D_LLAMACPP) {
		cJSON *o = oai_head(c, "chat.completion.chunk");
		cJSON *ch = cJSON_CreateObject();
		cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "choices"), ch);
		cJSON_AddNumberToObject(ch, "index", 0);
		cJSON *d = cJSON_AddObjectToObject(ch, "delta");
		cJSON_AddStringToObject(d, "role", "assistant");
		cJSON_AddStringToObject(d, "content", "");
		cJSON_AddNullToObject(ch, "logprobs");
		cJSON_AddNullToObject(ch, "finish_reason");
		send_event(c, "data: ", o);
		cJSON_Delete(o);
	}
}

/* call_ms after arrival: the call's sequences join the engine. */
static void call_start_cb(evutil_socket_t fd, short what, void *arg)
{
	struct call *c = arg;
	(void)fd;
	(void)what;
	if (c->stream)
		start_stream_reply(c);
	c->running = true;
	for (unsigned i = 0; i < c->nseqs; i++) {
		c->seqs[i].state = S_QUEUED;
		TAILQ_INSERT_TAIL(&g_waitq, &c->seqs[i], qlink);
	}
	g_waiting += c->nseqs;
	engine_kick();
	if (g_waiting > stats.max_waiting)
		stats.max_waiting = g_waiting;
}

static void embed_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct call *c = arg;
	(void)fd;
	(void)what;
	detach_conn(c);
	if (c->req)
		send_body(c->req, 200, json_ctype(), c->body);
	c->req = NULL;
	free_call(c);
}

static struct timeval ms_tv(double ms)
{
	long long us = ms > 0 ? (long long)llround(ms * 1000.0) : 0;
	struct timeval tv = { (time_t)(us / 1000000), (suseconds_t)(us % 1000000) };
	return tv;
}

/* libevent 2.1 stops reading an incoming connection once the request is read, so it only notices a
 * client that went away when it next writes. Until our reply starts we watch for the close ourselves
 * and then tear the connection down (which runs on_close). */
static void closewatch_cb(evutil_socket_t fd, short what, void *arg)
{
	struct call *c = arg;
	(void)fd;
	/* EV_CLOSED = the peer shut its side down (a TLS peer sends close_notify first, so no peeking) */
	if ((what & EV_CLOSED) && c->conn)
		evhttp_connection_free(c->conn);
}

static struct call *new_call(struct evhttp_request *req, enum kind kind)
{
	struct call *c = xmalloc(sizeof *c);
	c->req = req;
	c->conn = evhttp_request_get_connection(req);
	c->kind = kind;
	c->created = (long long)time(NULL);
	c->out = evbuffer_new();
	g_call_number++;
	if (kind == K_CHAT || cfg.dialect == D_LLAMACPP)
		snprintf(c->id, sizeof c->id, "chatcmpl-sim-%lu", g_call_number);
	else if (kind == K_EMBED)
		snprintf(c->id, sizeof c->id, "embd-sim-%lu", g_call_number);
	else
		snprintf(c->id, sizeof c->id, "cmpl-sim-%lu", g_call_number);
	TAILQ_INSERT_TAIL(&g_calls, c, link);
	sconn_attach(c->conn, c);
	struct bufferevent *bev = evhttp_connection_get_bufferevent(c->conn);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd >= 0) {
		c->closewatch = event_new(g_base, fd, EV_CLOSED | EV_PERSIST, closewatch_cb, c);
		if (c->closewatch && event_add(c->closewatch, NULL) != 0) {
			event_free(c->closewatch);
			c->closewatch = NULL;
		}
	}
	return c;
}

/* ------------------------------------------------------------------ request handlers */

static cJSON *parse_body(struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
	cJSON *root = cJSON_ParseWithLength(data, len);
	if (!root) {
		send_error(req, 400, NULL, "invalid JSON in request body");
		return NULL;
	}
	if (!cJSON_IsObject(root)) {
		send_error(req, 400, NULL, "request body must be a JSON object");
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static long parse_max_tokens(const cJSON *root, bool chat)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
	if (chat && (!v || cJSON_IsNull(v)))
		v = cJSON_GetObjectItemCaseSensitive(root, "max_completion_tokens");
	long long mt;
	if (!json_is_int(v, &mt))
		return -1;
	if (mt > 1000000000LL)
		mt = 1000000000LL;
	if (mt < -1000000000LL)
		mt = -1;
	return (long)mt;
}

/* The last message's content as text (string content, or the text parts of an array). */
static char *chat_prompt_text(const cJSON *messages)
{
	if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
		return NULL;
	const cJSON *last = cJSON_GetArrayItem(messages, cJSON_GetArraySize(messages) - 1);
	if (!cJSON_IsObject(last))
		return NULL;
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(last, "content");
	if (cJSON_IsString(content))
		return xstrdup(content->valuestring);
	if (!cJSON_IsArray(content))
		return xstrdup("");
	size_t len = 0;
	const cJSON *part;
	cJSON_ArrayForEach(part, content)
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
		if (cJSON_IsString(t))
			len += strlen(t->valuestring);
	}
	char *s = xmalloc(len + 1);
	len = 0;
	cJSON_ArrayForEach(part, content)
	{
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
		if (cJSON_IsString(t)) {
			size_t w = strlen(t->valuestring);
			memcpy(s + len, t->valuestring, w);
			len += w;
		}
	}
	s[len] = 0;
	return s;
}

static void handle_completion(struct evhttp_request *req, bool chat)
{
	cJSON *root = parse_body(req);
	if (!root)
		return;
	const char *pname = chat ? "messages" : "prompt";
	long long n = 1;
	const cJSON *nv = cJSON_GetObjectItemCaseSensitive(root, "n");
	if (nv && !cJSON_IsNull(nv)) {
		if (!json_is_int(nv, &n) || n < 1 || n > MAX_N) {
			send_error(req, 400, "n", "\"n\" must be an integer between 1 and %d", MAX_N);
			cJSON_Delete(root);
			return;
		}
	}
	if (cfg.dialect == D_LLAMACPP && n != 1) {
		send_error(req, 500, NULL, "Only one completion choice is allowed");
		cJSON_Delete(root);
		return;
	}
	struct prompt *ps = NULL;
	unsigned np = 0;
	if (chat) {
		char *text = chat_prompt_text(cJSON_GetObjectItemCaseSensitive(root, "messages"));
		if (!text) {
			send_error(req, 400, "messages", "\"messages\" must be a non-empty array of message objects");
			cJSON_Delete(root);
			return;
		}
		ps = xmalloc(sizeof *ps);
		prompt_from_string(&ps[0], text);
		free(text);
		np = 1;
	} else {
		char err[256];
		if (parse_prompts(cJSON_GetObjectItemCaseSensitive(root, "prompt"), "prompt", &ps, &np, err, sizeof err)) {
			send_error(req, 400, "prompt", "%s", err);
			cJSON_Delete(root);
			return;
		}
	}
	int bad = find_magic(ps, np, "INVALID");
	if (bad >= 0) {
		send_error(req, 400, pname, "prompt %d is invalid (contains INVALID)", bad);
		free_prompts(ps, np);
		cJSON_Delete(root);
		return;
	}

	struct call *c = new_call(req, chat ? K_CHAT : K_COMPLETION);
	c->prompts = ps;
	c->nprompts = np;
	c->n = (unsigned)n;
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	c->model = xstrdup(cJSON_IsString(model) ? model->valuestring : DEFAULT_MODEL);
	c->stream = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(root, "stream"));
	const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
	if (c->stream && cJSON_IsObject(so)) {
		c->include_usage = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "include_usage"));
		c->continuous = cfg.dialect == D_VLLM &&
				cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(so, "continuous_usage_stats"));
	}
	long max_tokens = parse_max_tokens(root, chat);
	c->miderr = find_magic(ps, np, "MIDERR") >= 0;
	c->crash = find_magic(ps, np, "CRASH") >= 0;
	c->nseqs = np * c->n;
	c->remaining = c->nseqs;
	c->seqs = xmalloc(sizeof *c->seqs * c->nseqs);
	for (unsigned p = 0; p < np; p++) {
		for (unsigned j = 0; j < c->n; j++) {
			struct seq *s = &c->seqs[p * c->n + j];
			s->call = c;
			s->p = p;
			s->j = j;
			s->seed = simgen_seed(ps[p].key, ps[p].keylen, j);
			s->m = simgen_length_in(s->seed, cfg.answer_min, cfg.answer_max, max_tokens, &s->finish);
			s->state = S_IDLE;
		}
	}
	cJSON_Delete(root);
	stats_count_call(req, c->kind, ps, np);
	c->counted = c->kind != K_CHAT;
	c->timer = evtimer_new(g_base, call_start_cb, c);
	struct timeval tv = ms_tv(cfg.call_ms);
	evtimer_add(c->timer, &tv);
}

static void b64_floats(const double *v, unsigned n, char **out)
{
	size_t bytes = (size_t)n * 4;
	unsigned char *raw = xmalloc(bytes);
	for (unsigned k = 0; k < n; k++) {
		float f = (float)v[k];
		uint32_t u;
		memcpy(&u, &f, 4);
		raw[k * 4 + 0] = (unsigned char)(u & 0xff);
		raw[k * 4 + 1] = (unsigned char)((u >> 8) & 0xff);
		raw[k * 4 + 2] = (unsigned char)((u >> 16) & 0xff);
		raw[k * 4 + 3] = (unsigned char)((u >> 24) & 0xff);
	}
	char *b = xmalloc(4 * ((bytes + 2) / 3) + 1);
	EVP_EncodeBlock((unsigned char *)b, raw, (int)bytes);
	free(raw);
	*out = b;
}

static void handle_embeddings(struct evhttp_request *req)
{
	cJSON *root = parse_body(req);
	if (!root)
		return;
	struct prompt *ps = NULL;
	unsigned np = 0;
	char err[256];
	if (parse_prompts(cJSON_GetObjectItemCaseSensitive(root, "input"), "input", &ps, &np, err, sizeof err)) {
		send_error(req, 400, "input", "%s", err);
		cJSON_Delete(root);
		return;
	}
	long long dims = SIMGEN_DEFAULT_DIMS;
	const cJSON *dv = cJSON_GetObjectItemCaseSensitive(root, "dimensions");
	const cJSON *fv = cJSON_GetObjectItemCaseSensitive(root, "encoding_format");
	bool b64 = false;
	int bad;
	if (dv && !cJSON_IsNull(dv) && (!json_is_int(dv, &dims) || dims < 1 || dims > MAX_DIMS)) {
		send_error(req, 400, "dimensions", "\"dimensions\" must be an integer between 1 and %d", MAX_DIMS);
	} else if (fv && !cJSON_IsNull(fv) &&
		   !(cJSON_IsString(fv) && (!strcmp(fv->valuestring, "float") || !strcmp(fv->valuestring, "base64")))) {
		send_error(req, 400, "encoding_format", "\"encoding_format\" must be \"float\" or \"base64\"");
	} else if (cfg.max_inputs > 0 && np > (unsigned long)cfg.max_inputs) {
		send_error(req, 400, "input", "too many inputs: %u (this server accepts at most %ld per call)", np,
			   cfg.max_inputs);
	} else if ((bad = find_magic(ps, np, "INVALID")) >= 0) {
		send_error(req, 400, "input", "input %d is invalid (contains INVALID)", bad);
	} else {
		b64 = cJSON_IsString(fv) && !strcmp(fv->valuestring, "base64");
		goto ok;
	}
	free_prompts(ps, np);
	cJSON_Delete(root);
	return;
ok:;
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "object", "list");
	cJSON *data = cJSON_AddArrayToObject(o, "data");
	double *vals = xmalloc(sizeof *vals * (size_t)dims);
	unsigned long ptoks = 0;
	for (unsigned i = 0; i < np; i++) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddItemToArray(data, e);
		cJSON_AddStringToObject(e, "object", "embedding");
		cJSON_AddNumberToObject(e, "index", i);
		for (long long k = 0; k < dims; k++)
			vals[k] = simgen_embedding(ps[i].key, ps[i].keylen, (unsigned)k);
		if (b64) {
			char *s;
			b64_floats(vals, (unsigned)dims, &s);
			cJSON_AddStringToObject(e, "embedding", s);
			free(s);
		} else {
			cJSON *arr = cJSON_AddArrayToObject(e, "embedding");
			for (long long k = 0; k < dims; k++)
				cJSON_AddItemToArray(arr, exact_number(vals[k]));
		}
		ptoks += ps[i].ptoks;
	}
	free(vals);
	cJSON_AddStringToObject(o, "model", cJSON_IsString(model) ? model->valuestring : DEFAULT_MODEL);
	cJSON *u = cJSON_AddObjectToObject(o, "usage");
	cJSON_AddNumberToObject(u, "prompt_tokens", (double)ptoks);
	cJSON_AddNumberToObject(u, "total_tokens", (double)ptoks);
	cJSON_Delete(root);

	struct call *c = new_call(req, K_EMBED);
	c->prompts = ps;
	c->nprompts = np;
	c->body = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	stats_count_call(req, K_EMBED, ps, np);
	c->counted = true;
	c->timer = evtimer_new(g_base, embed_done_cb, c);
	struct timeval tv = ms_tv(cfg.step_ms > 0 ? cfg.call_ms + cfg.step_ms : cfg.call_ms);
	evtimer_add(c->timer, &tv);
}

static void handle_models(struct evhttp_request *req)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "object", "list");
	cJSON *m = cJSON_CreateObject();
	cJSON_AddItemToArray(cJSON_AddArrayToObject(o, "data"), m);
	cJSON_AddStringToObject(m, "id", DEFAULT_MODEL);
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", (double)g_start_time);
	cJSON_AddStringToObject(m, "owned_by", dialect_names[cfg.dialect]);
	send_json(req, 200, o);
	cJSON_Delete(o);
}

/* ------------------------------------------------------------------ load signals */

/* What the load endpoints do (--metrics): on: like the real server; off: like llama-server without
 * --metrics (/metrics 501, /props and /slots on); none: the server exports nothing (404 on all);
 * hang: /metrics accepts and never answers (also after --metrics-hang-after N answers). */
enum metrics_mode { M_ON, M_OFF, M_NONE, M_HANG };
static enum metrics_mode g_metrics_mode = M_ON;
static long g_metrics_hang_after = -1;
static unsigned long g_metrics_answered;

/* vLLM and llama.cpp name their gauges differently; vLLM labels each with model_name. */
static void handle_metrics(struct evhttp_request *req)
{
	if (g_metrics_mode == M_HANG || (g_metrics_hang_after >= 0 && (long)g_metrics_answered >= g_metrics_hang_after))
		return; /* accepted, never answered: the request stays with its connection */
	g_metrics_answered++;
	struct evbuffer *b = evbuffer_new();
	if (cfg.dialect == D_VLLM) {
		evbuffer_add_printf(b,
			"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
			"# TYPE vllm:num_requests_running gauge\n"
			"vllm:num_requests_running{engine=\"0\",model_name=\"%s\"} %lu.0\n"
			"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
			"# TYPE vllm:num_requests_waiting gauge\n"
			"vllm:num_requests_waiting{engine=\"0\",model_name=\"%s\"} %lu.0\n"
			"# HELP vllm:num_preemptions_total Cumulative number of preemption from the engine.\n"
			"# TYPE vllm:num_preemptions_total counter\n"
			"vllm:num_preemptions_total{engine=\"0\",model_name=\"%s\"} 0.0\n",
			DEFAULT_MODEL, g_active, DEFAULT_MODEL, g_waiting, DEFAULT_MODEL);
	} else {
		evbuffer_add_printf(b,
			"# HELP llamacpp:requests_processing Number of requests processing.\n"
			"# TYPE llamacpp:requests_processing gauge\n"
			"llamacpp:requests_processing %lu\n"
			"# HELP llamacpp:requests_deferred Number of requests deferred.\n"
			"# TYPE llamacpp:requests_deferred gauge\n"
			"llamacpp:requests_deferred %lu\n",
			g_active, g_waiting);
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, 200, "OK", b);
	evbuffer_free(b);
}

/* llama.cpp's /props (total_slots) and /slots (is_processing per slot); --slots 0 has no slot count. */
static void handle_slots(struct evhttp_request *req, bool list)
{
	cJSON *o = list ? cJSON_CreateArray() : cJSON_CreateObject();
	if (!list) {
		if (cfg.slots > 0)
			cJSON_AddNumberToObject(o, "total_slots", (double)cfg.slots);
		cJSON_AddStringToObject(o, "model_path", DEFAULT_MODEL);
		cJSON_AddStringToObject(o, "build_info", FINGERPRINT);
	}
	for (long i = 0; list && i < cfg.slots; i++) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddNumberToObject(e, "id", (double)i);
		cJSON_AddBoolToObject(e, "is_processing", (unsigned long)i < g_active);
		cJSON_AddItemToArray(o, e);
	}
	send_json(req, 200, o);
	cJSON_Delete(o);
}

/* GET /metrics, /props, /slots as the dialect's server serves them, or not (--metrics). */
static void handle_load(struct evhttp_request *req, const char *path)
{
	bool metrics = !strcmp(path, "/metrics");
	bool llama = cfg.dialect == D_LLAMACPP;
	if (g_metrics_mode == M_NONE || cfg.dialect == D_OPENAI || (!llama && !metrics) || (!strcmp(path, "/slots") && cfg.slots <= 0))
		send_error(req, 404, NULL, "Not found: %s", path);
	else if (metrics && g_metrics_mode == M_OFF)
		send_error(req, 501, NULL, "This server does not support metrics endpoint.");
	else if (metrics)
		handle_metrics(req);
	else
		handle_slots(req, !strcmp(path, "/slots"));
}

/* ------------------------------------------------------------------ connections
 *
 * Each connection that sent a request has a struct sconn, found by its socket, until it closes. It
 * carries the connection modes of real servers: the Keep-Alive header, an idle timeout, a close after
 * every streamed answer while still advertising keep-alive (llama.cpp b4748), a close instead of an
 * answer on a reused connection, and a limit on connections served at once (llama.cpp's HTTP threads:
 * the rest are accepted and wait unanswered, as in cpp-httplib's thread-pool queue). */

struct sconn {
	struct evhttp_connection *conn;
	evutil_socket_t fd;
	struct call *call;	     /* the call it carries, or NULL */
	unsigned requests;	     /* received on it */
	bool served;		     /* holds one of --max-conns */
	bool closing;		     /* closed once its output has left; requests on it go unanswered */
	bool stream_done;	     /* a streamed answer ended on it (--close-after-stream=next) */
	struct evhttp_request *held; /* its first request, waiting for --max-conns room */
	struct event *timer;	     /* the close once flushed */
	TAILQ_ENTRY(sconn) wait;
};
TAILQ_HEAD(sconn_queue, sconn);

static struct sconn **g_sconns; /* by socket */
static size_t g_nsconns;
static struct sconn_queue g_conn_waitq = TAILQ_HEAD_INITIALIZER(g_conn_waitq);
static unsigned long g_served;
static bool g_stopping;
static struct {
	unsigned long accepted, open, max_open, max_served, waited, dropped_requests, closed_after_stream;
} cstats;

static void dispatch_request(struct evhttp_request *req);

static struct sconn *sconn_find(struct evhttp_connection *conn)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd < 0 || (size_t)fd >= g_nsconns || !g_sconns[fd] || g_sconns[fd]->conn != conn)
		return NULL;
	return g_sconns[fd];
}

/* The connection's close callback: whatever it carried ends with it; a waiting one takes its place. */
static void sconn_closed(struct evhttp_connection *conn, void *arg)
{
	struct sconn *sc = arg;
	evhttp_connection_set_closecb(conn, NULL, NULL);
	if (sc->call)
		on_close(conn, sc->call);
	if (sc->held)
		TAILQ_REMOVE(&g_conn_waitq, sc, wait);
	if (sc->timer)
		event_free(sc->timer);
	g_sconns[sc->fd] = NULL;
	cstats.open--;
	if (sc->served)
		g_served--;
	free(sc);
	while (!g_stopping && !TAILQ_EMPTY(&g_conn_waitq) && g_served < (unsigned long)cfg.max_conns) {
		struct sconn *next = TAILQ_FIRST(&g_conn_waitq);
		TAILQ_REMOVE(&g_conn_waitq, next, wait);
		struct evhttp_request *req = next->held;
		next->held = NULL;
		next->served = true;
		if (++g_served > cstats.max_served)
			cstats.max_served = g_served;
		dispatch_request(req);
	}
}

static struct sconn *sconn_new(struct evhttp_connection *conn)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(conn);
	evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
	if (fd < 0)
		return NULL;
	if ((size_t)fd >= g_nsconns) {
		size_t n = g_nsconns ? g_nsconns : 1024;
		while (n <= (size_t)fd)
			n *= 2;
		g_sconns = realloc(g_sconns, n * sizeof *g_sconns);
		if (!g_sconns)
			abort();
		memset(g_sconns + g_nsconns, 0, (n - g_nsconns) * sizeof *g_sconns);
		g_nsconns = n;
	}
	struct sconn *sc = xmalloc(sizeof *sc);
	memset(sc, 0, sizeof *sc);
	sc->conn = conn;
	sc->fd = fd;
	g_sconns[fd] = sc;
	evhttp_connection_set_closecb(conn, sconn_closed, sc);
	cstats.accepted++;
	if (++cstats.open > cstats.max_open)
		cstats.max_open = cstats.open;
	return sc;
}

/* The call a connection carries (c), or none (NULL): it hears of the connection's close. */
static void sconn_attach(struct evhttp_connection *conn, struct call *c)
{
	struct sconn *sc = sconn_find(conn);
	if (sc)
		sc->call = c;
}

static void sconn_close_cb(evutil_socket_t fd, short what, void *arg)
{
	struct sconn *sc = arg;
	(void)fd;
	(void)what;
	struct bufferevent *bev = evhttp_connection_get_bufferevent(sc->conn);
	if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > 0) {
		struct timeval tv = { 0, 1000 };
		evtimer_add(sc->timer, &tv);
		return;
	}
	evhttp_connection_free(sc->conn); /* sconn_closed frees sc */
}

/* Closes the connection (without a word) once what is queued on it has left. */
static void sconn_close_when_flushed(struct evhttp_connection *conn)
{
	struct sconn *sc = sconn_find(conn);
	if (!sc || sc->closing)
		return;
	sc->closing = true;
	sc->timer = evtimer_new(g_base, sconn_close_cb, sc);
	struct timeval tv = { 0, 0 };
	evtimer_add(sc->timer, &tv);
}

/* A streamed answer on conn has been queued whole: --close-after-stream closes the connection, the
 * Keep-Alive header notwithstanding (llama.cpp b4748), once the answer has left or (=next) when the
 * next request arrives on it, unanswered. */
static void sconn_stream_done(struct evhttp_connection *conn)
{
	struct sconn *sc = sconn_find(conn);
	if (!sc || cfg.close_after_stream == CLOSE_NO)
		return;
	cstats.closed_after_stream++;
	if (cfg.close_after_stream == CLOSE_FLUSHED)
		sconn_close_when_flushed(conn);
	else
		sc->stream_done = true;
}

static void conn_stats_json(cJSON *o)
{
	cJSON *c = cJSON_AddObjectToObject(o, "connections");
	cJSON_AddNumberToObject(c, "accepted", (double)cstats.accepted);
	cJSON_AddNumberToObject(c, "open", (double)cstats.open);
	cJSON_AddNumberToObject(c, "max_open", (double)cstats.max_open);
	cJSON_AddNumberToObject(c, "max_served", (double)cstats.max_served);
	cJSON_AddNumberToObject(c, "waited", (double)cstats.waited);
	cJSON_AddNumberToObject(c, "dropped_requests", (double)cstats.dropped_requests);
	cJSON_AddNumberToObject(c, "closed_after_stream", (double)cstats.closed_after_stream);
}

static void conn_stats_reset(void)
{
	unsigned long open = cstats.open;
	memset(&cstats, 0, sizeof cstats);
	cstats.open = cstats.max_open = open;
	cstats.max_served = g_served;
}

static double mono_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --rpm: takes one call from the budget (at most cfg.rpm in any 60 s), or answers 429 with Retry-After
 * (the seconds until the oldest call of the window leaves it) and returns false. */
static bool budget_take(struct evhttp_request *req)
{
	double now = mono_s();
	unsigned long r = (unsigned long)cfg.rpm;
	if (g_budget_n == r) {
		double oldest = g_budget[g_budget_head];
		if (now - oldest < 60.0) {
			char v[32];
			struct evkeyvalq *h = evhttp_request_get_output_headers(req);
			snprintf(v, sizeof v, "%ld", (long)ceil(oldest + 60.0 - now));
			evhttp_add_header(h, "Retry-After", v);
			snprintf(v, sizeof v, "%ld", cfg.rpm);
			evhttp_add_header(h, "x-ratelimit-limit-requests", v);
			evhttp_add_header(h, "x-ratelimit-remaining-requests", "0");
			stats.rate_limited++;
			send_error(req, 429, NULL, "Rate limit reached for requests: limit %ld per minute", cfg.rpm);
			return false;
		}
		g_budget_head = (g_budget_head + 1) % r; /* the oldest leaves the window */
		g_budget_n--;
	}
	g_budget[(g_budget_head + g_budget_n) % r] = now;
	g_budget_n++;
	return true;
}

static void on_request(struct evhttp_request *req, void *arg)
{
	(void)arg;
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	struct sconn *sc = sconn_find(conn);
	if (!sc)
		sc = sconn_new(conn);
	if (!sc) {
		dispatch_request(req);
		return;
	}
	sc->requests++;
	if (sc->closing || sc->stream_done || (cfg.drop_reused && sc->requests > 1)) {
		/* unanswered: the connection closes under it, as an idle timeout that struck just then */
		cstats.dropped_requests++;
		sconn_close_when_flushed(conn);
		return;
	}
	if (!sc->served && cfg.max_conns > 0) {
		if (g_served >= (unsigned long)cfg.max_conns) {
			cstats.waited++;
			sc->held = req;
			TAILQ_INSERT_TAIL(&g_conn_waitq, sc, wait);
			return;
		}
		sc->served = true;
		if (++g_served > cstats.max_served)
			cstats.max_served = g_served;
	}
	dispatch_request(req);
}

static void dispatch_request(struct evhttp_request *req)
{
	struct evhttp_connection *conn = evhttp_request_get_connection(req);
	struct sconn *sc = sconn_find(conn);
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	if (cfg.ka_timeout_s >= 0) {
		char ka[64];
		snprintf(ka, sizeof ka, "timeout=%ld, max=%ld", cfg.ka_timeout_s, cfg.ka_max);
		evhttp_add_header(out, "Keep-Alive", ka);
		if (sc && sc->requests >= (unsigned long)cfg.ka_max)
			evhttp_add_header(out, "Connection", "close");
	}
	/* Streams flow: no Nagle delay on the simulator's side either. */
	struct bufferevent *nd_bev = evhttp_connection_get_bufferevent(conn);
	if (nd_bev && bufferevent_getfd(nd_bev) >= 0) {
		int one = 1;
		setsockopt(bufferevent_getfd(nd_bev), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}

	evhttp_add_header(evhttp_request_get_output_headers(req), "Server", server_name());
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	if (!path || !*path)
		path = "/";
	log_request(req, path);
	enum evhttp_cmd_type m = evhttp_request_get_command(req);
	bool get = m == EVHTTP_REQ_GET, post = m == EVHTTP_REQ_POST;
	if (post && cfg.rpm > 0 && !strncmp(path, "/v1/", 4) && !budget_take(req))
		return;
	if (post && !strcmp(path, "/v1/completions"))
		handle_completion(req, false);
	else if (post && !strcmp(path, "/v1/chat/completions"))
		handle_completion(req, true);
	else if (post && !strcmp(path, "/v1/embeddings"))
		handle_embeddings(req);
	else if (get && !strcmp(path, "/v1/models"))
		handle_models(req);
	else if (get && !strcmp(path, "/health"))
		send_body(req, 200, json_ctype(), "{\"status\":\"ok\"}");
	else if (get && !strcmp(path, "/info") && cfg.max_inputs > 0) {
		/* like text-embeddings-inference's /info, which tells its client batch limit */
		char info[160];
		snprintf(info, sizeof info, "{\"model_id\":\"sim-model\",\"max_client_batch_size\":%ld}", cfg.max_inputs);
		send_body(req, 200, json_ctype(), info);
	} else if (get && (!strcmp(path, "/metrics") || !strcmp(path, "/props") || !strcmp(path, "/slots")))
		handle_load(req, path);
	else if (get && !strcmp(path, "/stats"))
		handle_stats(req);
	else if (post && !strcmp(path, "/stats/reset"))
		handle_stats_reset(req);
	else
		send_error(req, 404, NULL, "Not found: %s", path);
	g_logged = NULL;
}

/* ------------------------------------------------------------------ setup */

static struct bufferevent *tls_bevcb(struct event_base *base, void *arg)
{
	SSL *ssl = SSL_new((SSL_CTX *)arg);
	if (!ssl)
		return NULL;
	struct bufferevent *bev = bufferevent_openssl_socket_new(base, -1, ssl, BUFFEREVENT_SSL_ACCEPTING,
								 BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (bev)
		bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	return bev;
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	event_base_loopbreak(g_base);
}

static void usage(FILE *f)
{
	fprintf(f,
		"carpool-sim: a SIMULATED OpenAI-compatible LLM upstream (NOT a language model).\n"
		"Its output is synthetic and deterministic (bench/simgen.h); it exists to test and demo carpool.\n"
		"\n"
		"usage: carpool-sim [options]\n"
		"  --listen HOST:PORT       address to listen on (default 127.0.0.1:0, port 0 = any free port)\n"
		"  --dialect D              openai | vllm | llamacpp wire format (default vllm)\n"
		"  --step-ms F              duration of one decode step in ms (default 5; 0 = flood mode)\n"
		"  --call-ms F              fixed cost of a call before its first step in ms (default 1)\n"
		"  --step-us-per-seq F      extra step cost per active sequence in microseconds (default 2)\n"
		"  --slots N                max sequences decoding at once, others queue (default 0 = unlimited)\n"
		"  --answer-tokens MIN:MAX  natural answer lengths, per prompt (default 3:16; max_tokens caps them)\n"
		"  --max-inputs N           max inputs per /v1/embeddings call (default 0 = unlimited)\n"
		"  --keep-alive T[,M]       send 'Keep-Alive: timeout=T, max=M' (M default 100), close a connection\n"
		"                           idle for T s, and close one after its M-th answer\n"
		"  --idle-close-ms F        close a connection idle for F ms (overrides --keep-alive's T; 0 = never)\n"
		"  --close-after-stream[=W] close the connection after each streamed answer (llama.cpp b4748):\n"
		"                           W = flushed (default): once it has left; next: when the next request\n"
		"                           arrives on it, leaving that request unanswered\n"
		"  --drop-reused            close, unanswered, a connection on which a second request arrives\n"
		"  --max-conns N            serve at most N connections at once; the rest wait (default 0 = no limit)\n"
		"  --backlog N              listen backlog (default 4096)\n"
		"  --rpm R                  request budget: at most R POSTs to /v1/ in any 60 s, others get 429\n"
		"  --port-file FILE         write the bound port number to FILE\n"
		"  --tls-cert FILE          serve HTTPS with this certificate chain (needs --tls-key)\n"
		"  --tls-key FILE           private key for --tls-cert\n"
		"  --metrics MODE           load endpoints: on (like the server), off (llama-server without --metrics:\n"
		"                           /metrics 501), none (404 on all), hang (/metrics never answers)\n"
		"  --metrics-hang-after N   /metrics answers N times, then never again\n"
		"  --burst                  a step gives each sequence all its remaining tokens, written at once\n"
		"  --help                   show this help\n"
		"\n"
		"Endpoints: POST /v1/completions, /v1/chat/completions, /v1/embeddings; GET /v1/models, /health,\n"
		"/stats; POST /stats/reset. Prompts containing INVALID fail with 400, MIDERR fail after 2 steps,\n"
		"CRASH make the server drop the connection after 2 steps.\n");
}

static double parse_double_opt(const char *name, const char *v)
{
	char *end;
	errno = 0;
	double d = strtod(v, &end);
	if (errno || end == v || *end || !isfinite(d) || d < 0) {
		fprintf(stderr, "carpool-sim: bad value for --%s: %s\n", name, v);
		exit(2);
	}
	return d;
}

static long parse_long_opt(const char *name, const char *v)
{
	char *end;
	errno = 0;
	long l = strtol(v, &end, 10);
	if (errno || end == v || *end || l < 0) {
		fprintf(stderr, "carpool-sim: bad value for --%s: %s\n", name, v);
		exit(2);
	}
	return l;
}

static void parse_listen(const char *v)
{
	const char *colon;
	size_t hl;
	const char *h = v;
	if (v[0] == '[') {
		const char *rb = strchr(v, ']');
		if (!rb || rb[1] != ':')
			goto bad;
		h = v + 1;
		hl = (size_t)(rb - h);
		colon = rb + 1;
	} else {
		colon = strrchr(v, ':');
		if (!colon)
			goto bad;
		hl = (size_t)(colon - v);
	}
	if (hl == 0 || hl >= sizeof cfg.host || strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof cfg.port)
		goto bad;
	memcpy(cfg.host, h, hl);
	cfg.host[hl] = 0;
	strcpy(cfg.port, colon + 1);
	return;
bad:
	fprintf(stderr, "carpool-sim: --listen wants HOST:PORT (or [V6]:PORT), got %s\n", v);
	exit(2);
}

static evutil_socket_t open_listener(unsigned *port_out)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	int rc = getaddrinfo(cfg.host, cfg.port, &hints, &res);
	if (rc) {
		fprintf(stderr, "carpool-sim: cannot resolve %s:%s: %s\n", cfg.host, cfg.port, gai_strerror(rc));
		return -1;
	}
	evutil_socket_t fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC, res->ai_protocol);
	if (fd < 0) {
		perror("carpool-sim: socket");
		freeaddrinfo(res);
		return -1;
	}
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(fd, res->ai_addr, res->ai_addrlen) < 0 || listen(fd, (int)cfg.backlog) < 0) {
		fprintf(stderr, "carpool-sim: cannot listen on %s:%s: %s\n", cfg.host, cfg.port, strerror(errno));
		close(fd);
		freeaddrinfo(res);
		return -1;
	}
	freeaddrinfo(res);
	evutil_make_socket_nonblocking(fd);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof ss;
	getsockname(fd, (struct sockaddr *)&ss, &sl);
	if (ss.ss_family == AF_INET6)
		*port_out = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		*port_out = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return fd;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "dialect", required_argument, NULL, 'd' },
		{ "step-ms", required_argument, NULL, 's' },
		{ "call-ms", required_argument, NULL, 'c' },
		{ "step-us-per-seq", required_argument, NULL, 'u' },
		{ "slots", required_argument, NULL, 'S' },
		{ "answer-tokens", required_argument, NULL, 'a' },
		{ "max-inputs", required_argument, NULL, 'm' },
		{ "rpm", required_argument, NULL, 'r' },
		{ "port-file", required_argument, NULL, 'p' },
		{ "keep-alive", required_argument, NULL, 'k' },
		{ "idle-close-ms", required_argument, NULL, 'i' },
		{ "close-after-stream", optional_argument, NULL, 'A' },
		{ "drop-reused", no_argument, NULL, 'R' },
		{ "max-conns", required_argument, NULL, 'N' },
		{ "backlog", required_argument, NULL, 'B' },
		{ "tls-cert", required_argument, NULL, 'C' },
		{ "tls-key", required_argument, NULL, 'K' },
		{ "metrics", required_argument, NULL, 'M' },
		{ "metrics-hang-after", required_argument, NULL, 'H' },
		{ "burst", no_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (o) {
		case 'l':
			parse_listen(optarg);
			break;
		case 'd':
			if (!strcmp(optarg, "openai"))
				cfg.dialect = D_OPENAI;
			else if (!strcmp(optarg, "vllm"))
				cfg.dialect = D_VLLM;
			else if (!strcmp(optarg, "llamacpp"))
				cfg.dialect = D_LLAMACPP;
			else {
				fprintf(stderr, "carpool-sim: --dialect must be openai, vllm or llamacpp\n");
				return 2;
			}
			break;
		case 's':
			cfg.step_ms = parse_double_opt("step-ms", optarg);
			break;
		case 'c':
			cfg.call_ms = parse_double_opt("call-ms", optarg);
			break;
		case 'u':
			cfg.step_us_per_seq = parse_double_opt("step-us-per-seq", optarg);
			break;
		case 'S':
			cfg.slots = parse_long_opt("slots", optarg);
			break;
		case 'a':
			if (!simgen_parse_answers(optarg, &cfg.answer_min, &cfg.answer_max)) {
				fprintf(stderr, "carpool-sim: --answer-tokens wants MIN:MAX with 1 <= MIN <= MAX <= %d, got %s\n",
					SIMGEN_ANSWER_LIMIT, optarg);
				return 2;
			}
			break;
		case 'm':
			cfg.max_inputs = parse_long_opt("max-inputs", optarg);
			break;
		case 'r':
			cfg.rpm = parse_long_opt("rpm", optarg);
			if (cfg.rpm > 10000000) {
				fprintf(stderr, "carpool-sim: --rpm is at most 10000000\n");
				return 2;
			}
			break;
		case 'p':
			cfg.port_file = optarg;
			break;
		case 'k': {
			char *comma = strchr(optarg, ',');
			if (comma)
				*comma = 0;
			cfg.ka_timeout_s = parse_long_opt("keep-alive", optarg);
			cfg.ka_max = comma ? parse_long_opt("keep-alive", comma + 1) : 100;
			if (cfg.ka_max < 1) {
				fprintf(stderr, "carpool-sim: --keep-alive wants T[,M] with M >= 1\n");
				return 2;
			}
			break;
		}
		case 'i':
			cfg.idle_close_ms = parse_double_opt("idle-close-ms", optarg);
			break;
		case 'A':
			if (!optarg || !strcmp(optarg, "flushed"))
				cfg.close_after_stream = CLOSE_FLUSHED;
			else if (!strcmp(optarg, "next"))
				cfg.close_after_stream = CLOSE_NEXT;
			else {
				fprintf(stderr, "carpool-sim: --close-after-stream takes flushed or next\n");
				return 2;
			}
			break;
		case 'R':
			cfg.drop_reused = true;
			break;
		case 'N':
			cfg.max_conns = parse_long_opt("max-conns", optarg);
			break;
		case 'B':
			cfg.backlog = parse_long_opt("backlog", optarg);
			break;
		case 'C':
			cfg.tls_cert = optarg;
			break;
		case 'K':
			cfg.tls_key = optarg;
			break;
		case 'M':
			if (!strcmp(optarg, "on"))
				g_metrics_mode = M_ON;
			else if (!strcmp(optarg, "off"))
				g_metrics_mode = M_OFF;
			else if (!strcmp(optarg, "none"))
				g_metrics_mode = M_NONE;
			else if (!strcmp(optarg, "hang"))
				g_metrics_mode = M_HANG;
			else {
				fprintf(stderr, "carpool-sim: --metrics must be on, off, none or hang\n");
				return 2;
			}
			break;
		case 'H':
			g_metrics_hang_after = parse_long_opt("metrics-hang-after", optarg);
			break;
		case 'b':
			cfg.burst = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "carpool-sim: unexpected argument %s\n", argv[optind]);
		return 2;
	}
	if (!cfg.tls_cert != !cfg.tls_key) {
		fprintf(stderr, "carpool-sim: --tls-cert and --tls-key go together\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	g_start_time = (long long)time(NULL);
	stats.auth = cJSON_CreateObject();
	if (cfg.rpm > 0)
		g_budget = xmalloc(sizeof *g_budget * (size_t)cfg.rpm);

	if (cfg.tls_cert) {
		g_ssl_ctx = SSL_CTX_new(TLS_server_method());
		if (!g_ssl_ctx || SSL_CTX_use_certificate_chain_file(g_ssl_ctx, cfg.tls_cert) != 1 ||
		    SSL_CTX_use_PrivateKey_file(g_ssl_ctx, cfg.tls_key, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(g_ssl_ctx) != 1) {
			fprintf(stderr, "carpool-sim: cannot load TLS certificate/key:\n");
			ERR_print_errors_fp(stderr);
			SSL_CTX_free(g_ssl_ctx);
			cJSON_Delete(stats.auth);
			return 1;
		}
	}

	struct event_config *ec = event_config_new();
	event_config_set_flag(ec, EVENT_BASE_FLAG_PRECISE_TIMER);
	g_base = event_base_new_with_config(ec);
	event_config_free(ec);
	if (!g_base) {
		fprintf(stderr, "carpool-sim: cannot create event base\n");
		return 1;
	}
	g_http = evhttp_new(g_base);
	evhttp_set_gencb(g_http, on_request, NULL);
	evhttp_set_allowed_methods(g_http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
						   EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
						   EVHTTP_REQ_PATCH);
	if (g_ssl_ctx)
		evhttp_set_bevcb(g_http, tls_bevcb, g_ssl_ctx);

	double idle_ms = cfg.idle_close_ms > 0 ? cfg.idle_close_ms : cfg.ka_timeout_s > 0 ? cfg.ka_timeout_s * 1000.0 : 0;
	if (idle_ms > 0) { /* evhttp's read timeout: it strikes a connection waiting for its next request */
		struct timeval tv = ms_tv(idle_ms);
		evhttp_set_timeout_tv(g_http, &tv);
	}

	unsigned port = 0;
	evutil_socket_t lfd = open_listener(&port);
	if (lfd < 0 || !evhttp_accept_socket_with_handle(g_http, lfd)) {
		if (lfd >= 0)
			evutil_closesocket(lfd);
		evhttp_free(g_http);
		event_base_free(g_base);
		SSL_CTX_free(g_ssl_ctx);
		cJSON_Delete(stats.auth);
		return 1;
	}
	g_step_timer = evtimer_new(g_base, step_cb, NULL);
	struct event *sigint = evsignal_new(g_base, SIGINT, on_signal, NULL);
	struct event *sigterm = evsignal_new(g_base, SIGTERM, on_signal, NULL);
	event_add(sigint, NULL);
	event_add(sigterm, NULL);

	if (strchr(cfg.host, ':'))
		printf("carpool-sim listening on [%s]:%u\n", cfg.host, port);
	else
		printf("carpool-sim listening on %s:%u\n", cfg.host, port);
	fflush(stdout);
	if (cfg.port_file) {
		FILE *pf = fopen(cfg.port_file, "w");
		if (!pf || fprintf(pf, "%u\n", port) < 0 || fclose(pf) != 0) {
			fprintf(stderr, "carpool-sim: cannot write %s\n", cfg.port_file);
			return 1;
		}
	}

	event_base_dispatch(g_base);

	/* Shutdown: forget our calls (libevent frees their requests with their connections). */
	while (!TAILQ_EMPTY(&g_calls)) {
		struct call *c = TAILQ_FIRST(&g_calls);
		detach_conn(c);
		c->req = NULL;
		g_in_step = true; /* no rescheduling while tearing down */
		free_call(c);
	}
	g_stopping = true; /* the connections closing now start nothing */
	evhttp_free(g_http);
	free(g_sconns);
	event_free(g_step_timer);
	event_free(sigint);
	event_free(sigterm);
	event_base_free(g_base);
	SSL_CTX_free(g_ssl_ctx);
	cJSON_Delete(stats.auth);
	cJSON_Delete(stats.requests);
	free(g_budget);
	libevent_global_shutdown();
	return 0;
}
