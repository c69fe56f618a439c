/* carpool-loadgen: load generator and correctness checker for carpool / carpool-sim.
 *
 * THIS TALKS TO A SIMULATOR. Every response is checked against the deterministic output defined in
 * bench/simgen.h: for prompt P and choice j the text must be the concatenation of
 * simgen_token(seed, i) for i < m, m = simgen_length_in(seed, MIN, MAX, max_tokens, &finish)
 * (MIN:MAX the sim's --answer-tokens, given here too), seed = simgen_seed(P, strlen(P), j), and
 * finish_reason must be `finish`.
 *
 * Model: C slots, one keep-alive HTTP/1.1 connection each (raw bufferevents, own minimal response
 * parser: Content-Length, chunked, or close-delimited bodies). Closed loop (default): slot c sends
 * the prompts "<prefix>client-<c>-req-<r>" for r = 0..R-1 back to back, its first one c*S/C seconds
 * after the start with --ramp-s S. Open loop (--rate X): the same C*R prompts arrive at X per second
 * (Poisson or fixed spacing); the k-th arrival is "client-<k%C>-req-<k/C>" and runs on any idle slot,
 * queueing while all C slots are busy; its TTFT and latency count from its arrival, queueing included.
 *
 * Streaming responses are parsed incrementally (SSE over any chunking, LF / CRLF / CR line ends).
 * Only 127.0.0.1, ::1 and localhost targets are accepted.
 */
#include "simgen.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/util.h>

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

/* ---------------------------------------------------------------- options */

enum mode { MODE_STREAM, MODE_NONSTREAM, MODE_EMBEDDINGS };

static struct {
	char host_hdr[300];
	char path[600];
	struct sockaddr_storage addr;
	socklen_t addrlen;
	long concurrency;
	long requests;
	enum mode mode;
	long max_tokens; /* < 0: omitted from the request */
	bool max_tokens_set;
	unsigned answer_min, answer_max; /* the sim's --answer-tokens */
	double ramp_s; /* closed loop: first requests spread over this many seconds */
	long n;
	double rate; /* 0: closed loop */
	bool poisson;
	uint64_t seed;
	const char *prefix;
	const char *model;
	const char *api_key;
	double timeout_s;
	double duration_s; /* 0: no cap */
	bool quiet;
	bool no_retry;
	long max_details;
} opt = {
	.concurrency = 64,
	.requests = 1,
	.mode = MODE_STREAM,
	.max_tokens = 16,
	.answer_min = SIMGEN_ANSWER_MIN,
	.answer_max = SIMGEN_ANSWER_MAX,
	.n = 1,
	.poisson = true,
	.seed = 1,
	.prefix = "",
	.model = "sim-model",
	.timeout_s = 60,
	.max_details = 5,
};

/* ---------------------------------------------------------------- small helpers */

#define MAX_LINE 16384          /* status / header / chunk-size line */
#define MAX_BODY (64u << 20)    /* non-SSE body */
#define MAX_SSE_EVENT (4u << 20)
#define MAX_CHOICE_EXTRA 65536 /* text kept beyond the expected length, to show a mismatch */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double ns_to_ms(uint64_t ns) { return (double)ns / 1e6; }

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		fprintf(stderr, "carpool-loadgen: out of memory\n");
		exit(1);
	}
	return q;
}

static void *xcalloc(size_t a, size_t b)
{
	void *p = calloc(a ? a : 1, b ? b : 1);
	if (!p) {
		fprintf(stderr, "carpool-loadgen: out of memory\n");
		exit(1);
	}
	return p;
}

struct dbuf {
	char *p;
	size_t len, cap;
};

static void dbuf_reserve(struct dbuf *b, size_t extra)
{
	if (b->len + extra + 1 <= b->cap)
		return;
	size_t cap = b->cap ? b->cap : 256;
	while (cap < b->len + extra + 1)
		cap *= 2;
	b->p = xrealloc(b->p, cap);
	b->cap = cap;
}

static void dbuf_add(struct dbuf *b, const char *s, size_t n)
{
	dbuf_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = 0;
}

static void dbuf_clear(struct dbuf *b)
{
	b->len = 0;
	if (b->p)
		b->p[0] = 0;
}

static void dbuf_free(struct dbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof *b);
}

struct farr {
	float *v;
	size_t n, cap;
};

static void farr_push(struct farr *a, double x)
{
	if (a->n == a->cap) {
		a->cap = a->cap ? a->cap * 2 : 1024;
		a->v = xrealloc(a->v, a->cap * sizeof *a->v);
	}
	a->v[a->n++] = (float)x;
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;
	return (x > y) - (x < y);
}

/* Nearest-rank percentile of a sorted array; 0 when empty. */
static double pct(const struct farr *a, double p)
{
	if (a->n == 0)
		return 0;
	size_t rank = (size_t)ceil(p / 100.0 * (double)a->n);
	if (rank < 1)
		rank = 1;
	if (rank > a->n)
		rank = a->n;
	return a->v[rank - 1];
}

/* Printable, truncated copy of s for diagnostics. */
static void show(char *out, size_t cap, const char *s, size_t n)
{
	size_t o = 0;
	for (size_t i = 0; i < n && o + 8 < cap; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '\n') {
			out[o++] = '\\';
			out[o++] = 'n';
		} else if (c == '\r') {
			out[o++] = '\\';
			out[o++] = 'r';
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
		} else {
			out[o++] = (char)c;
		}
		if (i + 1 < n && o + 8 >= cap) {
			memcpy(out + o, "...", 3);
			o += 3;
			break;
		}
	}
	out[o] = 0;
}

/* ---------------------------------------------------------------- state */

enum hstate {
	H_STATUS,
	H_HEADERS,
	H_BODY_LEN,
	H_BODY_CLOSE,
	H_CHUNK_SIZE,
	H_CHUNK_DATA,
	H_CHUNK_CRLF,
	H_TRAILER,
};

enum fail { R_GOOD = 0, R_MISMATCH = 1, R_ERROR = 2 };

struct choice {
	struct dbuf exp;
	unsigned exp_tokens;
	const char *exp_finish;
	struct dbuf got;
	char got_finish[32];
	bool finish_seen;
	bool seen; /* nonstream: index present */
	uint64_t last_tok;
	bool overflow;
};

struct slot {
	int id;
	struct bufferevent *bev;
	unsigned reqs_on_conn; /* completed requests on the current connection */
	struct event *kick, *timer;
	bool busy;
	bool parked; /* has no more work (counted out of `active`) */
	long job_k; /* open loop: assigned arrival, -1 none */
	long next_r; /* closed loop */

	/* current request */
	long job_c, job_r;
	uint64_t t_arrival; /* open loop: when the job arrived */
	char prompt[512];
	size_t prompt_len;
	uint64_t t_start, t_first;
	uint64_t t_origin; /* TTFT and latency count from here: t_start, or the arrival in open loop */
	bool got_first;
	bool retried;
	struct dbuf req; /* serialized request, kept for a stale-connection retry */
	unsigned chunks; /* non-empty text chunks */
	struct farr gaps; /* this request's inter-token gaps, kept if it succeeds */

	/* response parsing */
	enum hstate hs;
	int status;
	bool http11;
	bool keepalive;
	bool chunked;
	long long clen; /* -1 unknown */
	long long remaining;
	bool resp_bytes; /* any response byte received */
	bool sse; /* body goes to the SSE parser */
	struct dbuf body;
	struct dbuf line;
	struct dbuf data;
	bool has_data;
	bool skip_lf;
	bool done; /* [DONE] seen */

	struct choice *ch;
	enum fail fail;
	char msg[2048];
};

static struct event_base *base;
static struct slot *slots;
static long total_planned;
static long active; /* slots that are busy or about to be */
static bool stopping, interrupted;
static uint64_t t_begin, t_last_end;

/* open loop */
static struct event *arrival_ev;
static long arrived, assigned;
static double next_arrival_s;
static uint64_t *arrival_ns; /* open loop: arrival time of each job */
static long *idle_stack;
static long idle_n;
static uint64_t rng_state;
static long backlog_max;

/* stats */
static long st_requests, st_ok, st_errors, st_mismatches, st_retries, st_connects, st_extra_tokens_note;
static unsigned long long st_tokens, st_expected_tokens;
static long details_printed;
static struct farr st_ttft, st_gap, st_lat;

static void finish_request(struct slot *s, bool reusable);
static void start_job(struct slot *s);

static void set_fail(struct slot *s, enum fail f, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void set_fail(struct slot *s, enum fail f, const char *fmt, ...)
{
	if (f <= s->fail)
		return;
	s->fail = f;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->msg, sizeof s->msg, fmt, ap);
	va_end(ap);
}

/* ---------------------------------------------------------------- connection */

static void close_conn(struct slot *s)
{
	if (s->bev) {
		bufferevent_free(s->bev);
		s->bev = NULL;
	}
	s->reqs_on_conn = 0;
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static bool open_conn(struct slot *s)
{
	s->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);
	if (!s->bev) {
		set_fail(s, R_ERROR, "bufferevent_socket_new failed");
		return false;
	}
	bufferevent_setcb(s->bev, on_read, NULL, on_event, s);
	if (bufferevent_socket_connect(s->bev, (struct sockaddr *)&opt.addr, (int)opt.addrlen) < 0) {
		int e = errno;
		set_fail(s, R_ERROR, "connect: %s", strerror(e));
		close_conn(s);
		return false;
	}
	evutil_socket_t fd = bufferevent_getfd(s->bev);
	if (fd >= 0) {
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	}
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	st_connects++;
	s->reqs_on_conn = 0;
	return true;
}

/* ---------------------------------------------------------------- verification */

static void handle_choice_obj(struct slot *s, const cJSON *c, bool stream, uint64_t t)
{
	if (!cJSON_IsObject(c)) {
		set_fail(s, R_MISMATCH, "choice is not an object");
		return;
	}
	const cJSON *idx = cJSON_GetObjectItemCaseSensitive(c, "index");
	if (!cJSON_IsNumber(idx)) {
		set_fail(s, R_MISMATCH, "choice without a numeric index");
		return;
	}
	double dv = idx->valuedouble;
	if (dv < 0 || dv >= (double)opt.n || dv != floor(dv)) {
		set_fail(s, R_MISMATCH, "unexpected choice index %g (n=%ld)", dv, opt.n);
		return;
	}
	struct choice *ch = &s->ch[(long)dv];
	if (!stream) {
		if (ch->seen) {
			set_fail(s, R_MISMATCH, "choice index %ld appears twice", (long)dv);
			return;
		}
		ch->seen = true;
	}
	const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
	if (text && !cJSON_IsNull(text)) {
		if (!cJSON_IsString(text)) {
			set_fail(s, R_MISMATCH, "choice %ld: text is not a string", (long)dv);
			return;
		}
		size_t tl = strlen(text->valuestring);
		if (tl) {
			if (ch->got.len + tl > ch->exp.len + MAX_CHOICE_EXTRA) {
				ch->overflow = true;
			} else {
				dbuf_add(&ch->got, text->valuestring, tl);
			}
			if (stream) {
				s->chunks++;
				if (!s->got_first) {
					s->got_first = true;
					s->t_first = t;
				}
				if (ch->last_tok)
					farr_push(&s->gaps, ns_to_ms(t - ch->last_tok));
				ch->last_tok = t;
			}
		}
	}
	const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
	if (fr && !cJSON_IsNull(fr)) {
		if (!cJSON_IsString(fr)) {
			set_fail(s, R_MISMATCH, "choice %ld: finish_reason is not a string", (long)dv);
			return;
		}
		snprintf(ch->got_finish, sizeof ch->got_finish, "%s", fr->valuestring);
		ch->finish_seen = true;
	}
}

static bool check_error_obj(struct slot *s, const cJSON *root)
{
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(root, "error");
	if (err && !cJSON_IsNull(err)) {
		char *txt = cJSON_PrintUnformatted(err);
		char buf[600];
		show(buf, sizeof buf, txt ? txt : "?", txt ? strlen(txt) : 1);
		set_fail(s, R_ERROR, "error object: %s", buf);
		cJSON_free(txt);
		return true;
	}
	return false;
}

/* One SSE event's data (stream mode). */
static void sse_dispatch(struct slot *s)
{
	if (!s->has_data)
		return;
	const char *d = s->data.p ? s->data.p : "";
	size_t dl = s->data.len;
	uint64_t t = now_ns();
	if (s->done) {
		char buf[200];
		show(buf, sizeof buf, d, dl);
		set_fail(s, R_MISMATCH, "event after [DONE]: %s", buf);
	} else if (dl == 6 && memcmp(d, "[DONE]", 6) == 0) {
		s->done = true;
	} else {
		cJSON *root = cJSON_ParseWithLength(d, dl);
		if (!root || !cJSON_IsObject(root)) {
			char buf[300];
			show(buf, sizeof buf, d, dl);
			set_fail(s, R_MISMATCH, "SSE data is not a JSON object: %s", buf);
		} else if (!check_error_obj(s, root)) {
			const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
			if (!cJSON_IsArray(choices)) {
				set_fail(s, R_MISMATCH, "SSE event without a choices array");
			} else {
				const cJSON *c;
				cJSON_ArrayForEach(c, choices) handle_choice_obj(s, c, true, t);
			}
		}
		cJSON_Delete(root);
	}
	dbuf_clear(&s->data);
	s->has_data = false;
}

static void sse_line(struct slot *s, const char *l, size_t n)
{
	if (n == 0) {
		sse_dispatch(s);
		return;
	}
	if (l[0] == ':')
		return; /* comment */
	const char *colon = memchr(l, ':', n);
	size_t fl = colon ? (size_t)(colon - l) : n;
	if (fl != 4 || memcmp(l, "data", 4) != 0)
		return; /* event:, id:, retry:, unknown fields */
	const char *v = colon ? colon + 1 : l + n;
	size_t vl = (size_t)(l + n - v);
	if (vl && *v == ' ') {
		v++;
		vl--;
	}
	if (s->data.len + vl + 1 > MAX_SSE_EVENT) {
		set_fail(s, R_MISMATCH, "SSE event larger than %u bytes", MAX_SSE_EVENT);
		return;
	}
	if (s->has_data)
		dbuf_add(&s->data, "\n", 1);
	dbuf_add(&s->data, v, vl);
	s->has_data = true;
}

static void sse_feed(struct slot *s, const char *p, size_t n)
{
	while (n) {
		if (s->skip_lf) {
			s->skip_lf = false;
			if (*p == '\n') {
				p++;
				n--;
				continue;
			}
		}
		size_t i = 0;
		while (i < n && p[i] != '\n' && p[i] != '\r')
			i++;
		if (i == n) {
			if (s->line.len + n > MAX_SSE_EVENT) {
				set_fail(s, R_MISMATCH, "SSE line longer than %u bytes", MAX_SSE_EVENT);
				dbuf_clear(&s->line);
			} else {
				dbuf_add(&s->line, p, n);
			}
			return;
		}
		if (s->line.len) {
			dbuf_add(&s->line, p, i);
			sse_line(s, s->line.p, s->line.len);
			dbuf_clear(&s->line);
		} else {
			sse_line(s, p, i);
		}
		if (p[i] == '\r')
			s->skip_lf = true;
		p += i + 1;
		n -= i + 1;
	}
}

static void body_feed(struct slot *s, const char *p, size_t n)
{
	if (s->sse) {
		sse_feed(s, p, n);
		return;
	}
	if (s->body.len + n > MAX_BODY) {
		set_fail(s, R_ERROR, "response body larger than %u bytes", MAX_BODY);
		return;
	}
	dbuf_add(&s->body, p, n);
}

static void feed_from(struct slot *s, struct evbuffer *in, size_t n)
{
	while (n) {
		struct evbuffer_iovec v[8];
		int cnt = evbuffer_peek(in, (ev_ssize_t)n, NULL, v, 8);
		if (cnt <= 0)
			break;
		size_t took = 0;
		for (int i = 0; i < cnt && took < n; i++) {
			size_t l = v[i].iov_len;
			if (l > n - took)
				l = n - took;
			body_feed(s, v[i].iov_base, l);
			took += l;
		}
		evbuffer_drain(in, took);
		n -= took;
	}
}

static void verify_choices(struct slot *s)
{
	for (long j = 0; j < opt.n; j++) {
		struct choice *ch = &s->ch[j];
		const char *got = ch->got.p ? ch->got.p : "";
		const char *want = ch->exp.p ? ch->exp.p : "";
		bool text_ok = !ch->overflow && ch->got.len == ch->exp.len && memcmp(got, want, ch->exp.len) == 0;
		bool fin_ok = ch->finish_seen && strcmp(ch->got_finish, ch->exp_finish) == 0;
		if (opt.mode == MODE_NONSTREAM && !ch->seen) {
			set_fail(s, R_MISMATCH, "choice %ld missing from the response", j);
			return;
		}
		if (!text_ok || !fin_ok) {
			char e[400], g[400];
			show(e, sizeof e, want, ch->exp.len);
			show(g, sizeof g, got, ch->got.len);
			set_fail(s, R_MISMATCH,
				 "choice %ld:\n    expected text \"%s\" finish_reason %s\n    got      text \"%s\"%s finish_reason %s",
				 j, e, ch->exp_finish, g, ch->overflow ? " (truncated, too long)" : "",
				 ch->finish_seen ? ch->got_finish : "(none)");
			return;
		}
	}
}

/* The response body as a JSON object, or NULL (the failure is recorded): not JSON, or an error object. */
static cJSON *body_object(struct slot *s)
{
	cJSON *root = cJSON_ParseWithLength(s->body.p ? s->body.p : "", s->body.len);
	if (!root || !cJSON_IsObject(root)) {
		char buf[300];
		show(buf, sizeof buf, s->body.p ? s->body.p : "", s->body.len);
		set_fail(s, R_MISMATCH, "response body is not a JSON object: %s", buf);
		cJSON_Delete(root);
		return NULL;
	}
	if (check_error_obj(s, root)) {
		cJSON_Delete(root);
		return NULL;
	}
	return root;
}

static void verify_nonstream(struct slot *s)
{
	cJSON *root = body_object(s);
	if (!root)
		return;
	const cJSON *choices = cJSON_GetObjectItemCaseSensitive(root, "choices");
	if (!cJSON_IsArray(choices)) {
		set_fail(s, R_MISMATCH, "response without a choices array");
	} else {
		const cJSON *c;
		cJSON_ArrayForEach(c, choices) handle_choice_obj(s, c, false, 0);
		if (s->fail == R_GOOD)
			verify_choices(s);
	}
	cJSON_Delete(root);
}

static void verify_embeddings(struct slot *s)
{
	cJSON *root = body_object(s);
	if (!root)
		return;
	const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
	const cJSON *d0 = cJSON_IsArray(data) ? cJSON_GetArrayItem(data, 0) : NULL;
	if (!d0 || cJSON_GetArraySize(data) != 1) {
		set_fail(s, R_MISMATCH, "expected a data array with exactly one element");
		goto out;
	}
	const cJSON *idx = cJSON_GetObjectItemCaseSensitive(d0, "index");
	if (!cJSON_IsNumber(idx) || idx->valuedouble != 0) {
		set_fail(s, R_MISMATCH, "data[0].index is not 0");
		goto out;
	}
	const cJSON *emb = cJSON_GetObjectItemCaseSensitive(d0, "embedding");
	if (!cJSON_IsArray(emb) || cJSON_GetArraySize(emb) != SIMGEN_DEFAULT_DIMS) {
		set_fail(s, R_MISMATCH, "data[0].embedding is not an array of %d numbers", SIMGEN_DEFAULT_DIMS);
		goto out;
	}
	for (unsigned k = 0; k < SIMGEN_DEFAULT_DIMS; k++) {
		const cJSON *x = cJSON_GetArrayItem(emb, (int)k);
		double want = simgen_embedding(s->prompt, s->prompt_len, k);
		if (!cJSON_IsNumber(x) || fabs(x->valuedouble - want) > 1e-6) {
			set_fail(s, R_MISMATCH, "embedding[%u]: expected %.9g got %.9g", k, want,
				 cJSON_IsNumber(x) ? x->valuedouble : NAN);
			goto out;
		}
	}
out:
	cJSON_Delete(root);
}

/* ---------------------------------------------------------------- HTTP response parser */

/* Copies one CRLF/LF-terminated line (without its end) into buf. 1: got it; 0: need more; -1: too long. */
static int get_line(struct evbuffer *in, char *buf, size_t cap, size_t *len)
{
	size_t eol_len = 0;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_CRLF);
	if (p.pos < 0)
		return evbuffer_get_length(in) >= cap ? -1 : 0;
	if ((size_t)p.pos >= cap)
		return -1;
	evbuffer_remove(in, buf, (size_t)p.pos);
	evbuffer_drain(in, eol_len);
	buf[p.pos] = 0;
	*len = (size_t)p.pos;
	return 1;
}

static void protocol_error(struct slot *s, const char *what)
{
	set_fail(s, R_ERROR, "HTTP protocol error: %s", what);
	finish_request(s, false);
}

static void headers_done(struct slot *s)
{
	if (s->status >= 100 && s->status < 200) { /* interim response: ignore */
		s->hs = H_STATUS;
		return;
	}
	s->sse = opt.mode == MODE_STREAM && s->status == 200;
	if (s->status == 204 || s->status == 304) {
		s->remaining = 0; /* no body */
		s->hs = H_BODY_LEN;
	} else if (s->chunked) {
		s->hs = H_CHUNK_SIZE;
	} else if (s->clen >= 0) {
		s->remaining = s->clen;
		s->hs = H_BODY_LEN;
	} else {
		s->keepalive = false;
		s->hs = H_BODY_CLOSE;
	}
}

/* Returns false when the request finished (the slot may have moved on: stop touching the buffer). */
static bool parse_step(struct slot *s, struct evbuffer *in)
{
	char line[MAX_LINE];
	size_t len;
	int r;
	switch (s->hs) {
	case H_STATUS:
		r = get_line(in, line, sizeof line, &len);
		if (r < 0) {
			protocol_error(s, "status line too long");
			return false;
		}
		if (r == 0)
			return false;
		if (len == 0 && s->status == 0)
			return true; /* tolerate a stray CRLF before the status line */
		{
			int maj, min, st;
			if (sscanf(line, "HTTP/%d.%d %d", &maj, &min, &st) != 3 || maj != 1) {
				char b[200];
				show(b, sizeof b, line, len);
				set_fail(s, R_ERROR, "bad status line: %s", b);
				finish_request(s, false);
				return false;
			}
			s->status = st;
			s->http11 = min >= 1;
			s->keepalive = s->http11;
			s->chunked = false;
			s->clen = -1;
			s->hs = H_HEADERS;
		}
		return true;
	case H_HEADERS:
		r = get_line(in, line, sizeof line, &len);
		if (r < 0) {
			protocol_error(s, "header line too long");
			return false;
		}
		if (r == 0)
			return false;
		if (len == 0) {
			headers_done(s);
			return true;
		}
		{
			char *colon = strchr(line, ':');
			if (!colon) {
				protocol_error(s, "header without a colon");
				return false;
			}
			*colon = 0;
			char *v = colon + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			char *e = v + strlen(v);
			while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
				*--e = 0;
			if (strcasecmp(line, "content-length") == 0) {
				char *end;
				errno = 0;
				long long cl = strtoll(v, &end, 10);
				if (errno || end == v || *end || cl < 0) {
					protocol_error(s, "bad Content-Length");
					return false;
				}
				s->clen = cl;
			} else if (strcasecmp(line, "transfer-encoding") == 0) {
				if (strcasestr(v, "chunked"))
					s->chunked = true;
			} else if (strcasecmp(line, "connection") == 0) {
				if (strcasestr(v, "close"))
					s->keepalive = false;
				else if (strcasestr(v, "keep-alive"))
					s->keepalive = true;
			}
		}
		return true;
	case H_BODY_LEN: {
		size_t avail = evbuffer_get_length(in);
		size_t take = (long long)avail < s->remaining ? avail : (size_t)s->remaining;
		if (take) {
			feed_from(s, in, take);
			s->remaining -= (long long)take;
		}
		if (s->remaining == 0) {
			finish_request(s, s->keepalive);
			return false;
		}
		return false;
	}
	case H_BODY_CLOSE: {
		size_t avail = evbuffer_get_length(in);
		if (avail)
			feed_from(s, in, avail);
		return false;
	}
	case H_CHUNK_SIZE:
		r = get_line(in, line, sizeof line, &len);
		if (r < 0) {
			protocol_error(s, "chunk-size line too long");
			return false;
		}
		if (r == 0)
			return false;
		{
			char *end;
			errno = 0;
			unsigned long long sz = strtoull(line, &end, 16);
			if (errno || end == line || (*end && *end != ';' && *end != ' ' && *end != '\t') ||
			    sz > (1ull << 40)) {
				protocol_error(s, "bad chunk size");
				return false;
			}
			if (sz == 0) {
				s->hs = H_TRAILER;
			} else {
				s->remaining = (long long)sz;
				s->hs = H_CHUNK_DATA;
			}
		}
		return true;
	case H_CHUNK_DATA: {
		size_t avail = evbuffer_get_length(in);
		size_t take = (long long)avail < s->remaining ? avail : (size_t)s->remaining;
		if (take) {
			feed_from(s, in, take);
			s->remaining -= (long long)take;
		}
		if (s->remaining == 0) {
			s->hs = H_CHUNK_CRLF;
			return true;
		}
		return false;
	}
	case H_CHUNK_CRLF:
		r = get_line(in, line, sizeof line, &len);
		if (r == 0)
			return false;
		if (r < 0 || len != 0) {
			protocol_error(s, "missing CRLF after chunk data");
			return false;
		}
		s->hs = H_CHUNK_SIZE;
		return true;
	case H_TRAILER:
		r = get_line(in, line, sizeof line, &len);
		if (r < 0) {
			protocol_error(s, "trailer line too long");
			return false;
		}
		if (r == 0)
			return false;
		if (len == 0) {
			finish_request(s, s->keepalive);
			return false;
		}
		return true;
	}
	return false;
}

static void on_read(struct bufferevent *bev, void *arg)
{
	struct slot *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	if (!s->busy) {
		/* Bytes on an idle connection: the server is out of step with us. */
		fprintf(stderr, "carpool-loadgen: slot %d: %zu unexpected bytes on an idle connection; closing it\n",
			s->id, evbuffer_get_length(in));
		close_conn(s);
		return;
	}
	if (evbuffer_get_length(in))
		s->resp_bytes = true;
	while (s->busy && s->bev == bev && parse_step(s, in))
		;
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct slot *s = arg;
	if (what & BEV_EVENT_CONNECTED)
		return;
	int err = EVUTIL_SOCKET_ERROR();
	if (!s->busy) {
		close_conn(s); /* idle keep-alive connection closed by the server */
		return;
	}
	/* Drain whatever arrived with the close. */
	struct evbuffer *in = bufferevent_get_input(bev);
	if (evbuffer_get_length(in)) {
		s->resp_bytes = true;
		while (s->busy && s->bev == bev && parse_step(s, in))
			;
		if (!s->busy || s->bev != bev)
			return;
	}
	if (s->hs == H_BODY_CLOSE && (what & BEV_EVENT_EOF)) {
		finish_request(s, false);
		return;
	}
	if (!s->resp_bytes && s->reqs_on_conn > 0 && !s->retried && !opt.no_retry) {
		/* The server closed a reused keep-alive connection before it saw our request: resend once. */
		s->retried = true;
		st_retries++;
		close_conn(s);
		if (!open_conn(s)) {
			finish_request(s, false);
			return;
		}
		evbuffer_add(bufferevent_get_output(s->bev), s->req.p, s->req.len);
		return;
	}
	if (what & BEV_EVENT_EOF)
		set_fail(s, R_ERROR, "connection closed by the server %s",
			 s->resp_bytes ? "in the middle of the response" : "before any response");
	else
		set_fail(s, R_ERROR, "connection error: %s", evutil_socket_error_to_string(err));
	finish_request(s, false);
}

/* ---------------------------------------------------------------- requests */

static void on_timeout(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct slot *s = arg;
	if (!s->busy)
		return;
	set_fail(s, R_ERROR, "timeout: no complete response within %g s", opt.timeout_s);
	finish_request(s, false);
}

static void build_request(struct slot *s)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "model", opt.model);
	if (opt.mode == MODE_EMBEDDINGS) {
		cJSON_AddStringToObject(o, "input", s->prompt);
	} else {
		cJSON_AddStringToObject(o, "prompt", s->prompt);
		if (opt.max_tokens >= 0)
			cJSON_AddNumberToObject(o, "max_tokens", (double)opt.max_tokens);
		cJSON_AddNumberToObject(o, "n", (double)opt.n);
		cJSON_AddBoolToObject(o, "stream", opt.mode == MODE_STREAM);
	}
	char *body = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	if (!body) {
		fprintf(stderr, "carpool-loadgen: out of memory\n");
		exit(1);
	}
	size_t bl = strlen(body);
	char hdr[2048];
	int hl = snprintf(hdr, sizeof hdr,
			    "POST %s/v1/%s HTTP/1.1\r\n"
			    "Host: %s\r\n"
			    "User-Agent: carpool-loadgen\r\n"
			    "Content-Type: application/json\r\n"
			    "Accept: %s\r\n"
			    "Content-Length: %zu\r\n",
			    opt.path, opt.mode == MODE_EMBEDDINGS ? "embeddings" : "completions", opt.host_hdr,
			    opt.mode == MODE_STREAM ? "text/event-stream" : "application/json", bl);
	dbuf_clear(&s->req);
	dbuf_add(&s->req, hdr, hl > 0 ? (size_t)hl : 0);
	if (opt.api_key) {
		dbuf_add(&s->req, "Authorization: Bearer ", 22);
		dbuf_add(&s->req, opt.api_key, strlen(opt.api_key));
		dbuf_add(&s->req, "\r\n", 2);
	}
	dbuf_add(&s->req, "\r\n", 2);
	dbuf_add(&s->req, body, bl);
	cJSON_free(body);
}

static void start_job(struct slot *s)
{
	s->busy = true;
	s->fail = R_GOOD;
	s->msg[0] = 0;
	s->retried = false;
	s->got_first = false;
	s->chunks = 0;
	s->gaps.n = 0;
	s->hs = H_STATUS;
	s->status = 0;
	s->resp_bytes = false;
	s->done = false;
	s->has_data = false;
	s->skip_lf = false;
	dbuf_clear(&s->body);
	dbuf_clear(&s->line);
	dbuf_clear(&s->data);
	int pl = snprintf(s->prompt, sizeof s->prompt, "%sclient-%ld-req-%ld", opt.prefix, s->job_c, s->job_r);
	s->prompt_len = pl < 0 ? 0 : (size_t)pl >= sizeof s->prompt ? sizeof s->prompt - 1 : (size_t)pl;
	if (opt.mode != MODE_EMBEDDINGS) {
		for (long j = 0; j < opt.n; j++) {
			struct choice *ch = &s->ch[j];
			uint32_t seed = simgen_seed(s->prompt, s->prompt_len, (unsigned)j);
			unsigned m = simgen_length_in(seed, opt.answer_min, opt.answer_max, opt.max_tokens,
						      &ch->exp_finish);
			dbuf_clear(&ch->exp);
			ch->exp_tokens = m;
			for (unsigned i = 0; i < m; i++) {
				char tok[SIMGEN_TOKEN_MAX];
				dbuf_add(&ch->exp, tok, simgen_token(seed, i, tok));
			}
			dbuf_clear(&ch->got);
			ch->got_finish[0] = 0;
			ch->finish_seen = false;
			ch->seen = false;
			ch->last_tok = 0;
			ch->overflow = false;
		}
	}
	build_request(s);
	st_requests++;
	s->t_start = now_ns();
	s->t_origin = opt.rate > 0 ? s->t_arrival : s->t_start;
	struct timeval tv = {(time_t)opt.timeout_s, (suseconds_t)((opt.timeout_s - floor(opt.timeout_s)) * 1e6)};
	evtimer_add(s->timer, &tv);
	if (!s->bev && !open_conn(s)) {
		finish_request(s, false);
		return;
	}
	evbuffer_add(bufferevent_get_output(s->bev), s->req.p, s->req.len);
}

static void print_detail(struct slot *s)
{
	if (details_printed >= opt.max_details)
		return;
	details_printed++;
	fprintf(stderr, "%s: prompt \"%s\" (slot %d, HTTP %d): %s\n", s->fail == R_ERROR ? "ERROR" : "MISMATCH",
		s->prompt, s->id, s->status, s->msg);
}

static void finish_request(struct slot *s, bool reusable)
{
	if (!s->busy)
		return;
	uint64_t t = now_ns();
	evtimer_del(s->timer);
	struct evbuffer *in = s->bev ? bufferevent_get_input(s->bev) : NULL;
	if (reusable && in && evbuffer_get_length(in)) {
		set_fail(s, R_ERROR, "%zu unexpected bytes after the end of the response", evbuffer_get_length(in));
		reusable = false;
	}
	if (s->fail == R_GOOD && s->status != 200) {
		char b[600];
		show(b, sizeof b, s->body.p ? s->body.p : "", s->body.len);
		set_fail(s, R_ERROR, "HTTP status %d: %s", s->status, b);
	}
	if (s->fail == R_GOOD) {
		if (opt.mode == MODE_STREAM) {
			if (s->line.len || s->has_data)
				set_fail(s, R_MISMATCH, "stream ended inside an unterminated SSE event");
			else if (!s->done)
				set_fail(s, R_MISMATCH, "stream ended without data: [DONE]");
			else
				verify_choices(s);
		} else if (opt.mode == MODE_NONSTREAM) {
			verify_nonstream(s);
		} else {
			verify_embeddings(s);
		}
	}
	double lat = ns_to_ms(t - s->t_origin);
	if (s->fail == R_GOOD) {
		st_ok++;
		farr_push(&st_lat, lat);
		if (opt.mode == MODE_STREAM) {
			st_tokens += s->chunks;
			if (s->got_first)
				farr_push(&st_ttft, ns_to_ms(s->t_first - s->t_origin));
			for (size_t i = 0; i < s->gaps.n; i++)
				farr_push(&st_gap, s->gaps.v[i]);
		} else if (opt.mode == MODE_NONSTREAM) {
			farr_push(&st_ttft, lat);
		}
		if (opt.mode != MODE_EMBEDDINGS) {
			unsigned long long exp = 0;
			for (long j = 0; j < opt.n; j++)
				exp += s->ch[j].exp_tokens;
			st_expected_tokens += exp;
			if (opt.mode == MODE_NONSTREAM)
				st_tokens += exp;
			else if (s->chunks != exp)
				st_extra_tokens_note++;
		}
	} else if (s->fail == R_MISMATCH) {
		st_mismatches++;
		print_detail(s);
	} else {
		st_errors++;
		print_detail(s);
	}
	t_last_end = t;
	if (reusable && s->bev)
		s->reqs_on_conn++;
	else
		close_conn(s);
	s->busy = false;
	event_active(s->kick, EV_TIMEOUT, 0);
}

/* ---------------------------------------------------------------- scheduling */

static void maybe_done(void)
{
	if (active == 0 && (opt.rate <= 0 || stopping || arrived >= total_planned))
		event_base_loopbreak(base);
}

static void park(struct slot *s)
{
	if (s->parked)
		return;
	s->parked = true;
	active--;
	maybe_done();
}

static void assign_idle(void);

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct slot *s = arg;
	if (s->busy)
		return;
	if (opt.rate <= 0) {
		if (!stopping && s->next_r < opt.requests) {
			s->job_c = s->id;
			s->job_r = s->next_r++;
			start_job(s);
		} else {
			park(s);
		}
		return;
	}
	if (s->job_k < 0 && !stopping && arrived > assigned)
		s->job_k = assigned++;
	if (s->job_k >= 0 && !stopping) {
		s->job_c = s->job_k % opt.concurrency;
		s->job_r = s->job_k / opt.concurrency;
		s->t_arrival = arrival_ns[s->job_k];
		s->job_k = -1;
		start_job(s);
		return;
	}
	s->job_k = -1;
	idle_stack[idle_n++] = s->id;
	park(s);
}

static void assign_idle(void)
{
	while (idle_n > 0 && arrived > assigned && !stopping) {
		struct slot *s = &slots[idle_stack[--idle_n]];
		s->parked = false;
		active++;
		s->job_k = assigned++;
		event_active(s->kick, EV_TIMEOUT, 0);
	}
	long backlog = arrived - assigned;
	if (backlog > backlog_max)
		backlog_max = backlog;
}

static double rng_uniform(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	uint64_t x = rng_state * 2685821657736338717ull;
	return ((double)(x >> 11) + 0.5) / 9007199254740992.0; /* (0,1) */
}

static void schedule_arrival(void)
{
	if (stopping || arrived >= total_planned)
		return;
	double due = (double)t_begin / 1e9 + next_arrival_s;
	double now = (double)now_ns() / 1e9;
	double d = due - now;
	if (d < 0)
		d = 0;
	struct timeval tv = {(time_t)d, (suseconds_t)((d - floor(d)) * 1e6)};
	evtimer_add(arrival_ev, &tv);
}

static void on_arrival(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	double el = (double)(now_ns() - t_begin) / 1e9;
	while (!stopping && arrived < total_planned && next_arrival_s <= el) {
		arrival_ns[arrived++] = t_begin + (uint64_t)llround(next_arrival_s * 1e9);
		next_arrival_s += opt.poisson ? -log(rng_uniform()) / opt.rate : 1.0 / opt.rate;
	}
	assign_idle();
	if (arrived >= total_planned || stopping) {
		maybe_done();
		return;
	}
	schedule_arrival();
}

static void on_duration(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	stopping = true;
	if (arrival_ev)
		evtimer_del(arrival_ev);
	maybe_done();
}

static void on_sigint(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	if (interrupted) {
		event_base_loopbreak(base);
		return;
	}
	interrupted = stopping = true;
	fprintf(stderr, "carpool-loadgen: interrupted; aborting in-flight requests\n");
	if (arrival_ev)
		evtimer_del(arrival_ev);
	for (long i = 0; i < opt.concurrency; i++) {
		struct slot *s = &slots[i];
		if (s->busy) {
			set_fail(s, R_ERROR, "interrupted");
			finish_request(s, false);
		}
	}
	maybe_done();
}

/* ---------------------------------------------------------------- command line */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: carpool-loadgen --url http://127.0.0.1:PORT [options]\n"
		"  --concurrency C     connections / max requests in flight (64)\n"
		"  --requests R        requests per client (1); C*R prompts in all\n"
		"  --mode M            stream | nonstream | embeddings (stream)\n"
		"  --max-tokens N      max_tokens sent (16, or MAX with --answer-tokens); negative: omit the field\n"
		"  --answer-tokens MIN:MAX  the simulator's --answer-tokens, to predict its answers (3:16)\n"
		"  --n N               choices per request (1)\n"
		"  --ramp-s S          closed loop: client c sends its first request c*S/C s after the start (0)\n"
		"  --rate X            open loop: start X requests/s in total (still at most C in flight);\n"
		"                      TTFT and latency count from each arrival, time queued here included\n"
		"  --arrival A         poisson | fixed spacing for --rate (poisson)\n"
		"  --seed S            seed of the Poisson arrivals (1)\n"
		"  --prefix STR        prompt prefix (\"\"); prompt = <prefix>client-<c>-req-<r>\n"
		"  --model M           model name sent (sim-model)\n"
		"  --api-key KEY       send Authorization: Bearer KEY\n"
		"  --timeout-s S       per-request timeout (60)\n"
		"  --duration-s D      stop starting requests after D seconds (in-flight ones finish)\n"
		"  --max-details N     mismatch / error details printed to stderr (5)\n"
		"  --quiet             only the RESULT line\n"
		"  --no-retry          do not resend a request once when a reused keep-alive connection is\n"
		"                      closed before any response byte (default: resend, counted as a retry)\n"
		"Prints a final line: RESULT requests=.. ok=.. errors=.. mismatches=.. tokens=.. elapsed_s=.. ...\n"
		"Exit status 0 only when every request completed and matched the simulator's output.\n");
}

static bool parse_long(const char *s, long *out, long lo, long hi)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	*out = v;
	return true;
}

static bool parse_double(const char *s, double *out, double lo)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo) || !isfinite(v))
		return false;
	*out = v;
	return true;
}

static bool parse_url(const char *url)
{
	if (strncmp(url, "http://", 7) != 0) {
		fprintf(stderr, "carpool-loadgen: --url must start with http://\n");
		return false;
	}
	const char *h = url + 7;
	const char *slash = strchr(h, '/');
	size_t auth_len = slash ? (size_t)(slash - h) : strlen(h);
	if (auth_len == 0 || auth_len >= sizeof opt.host_hdr) {
		fprintf(stderr, "carpool-loadgen: bad --url\n");
		return false;
	}
	memcpy(opt.host_hdr, h, auth_len);
	opt.host_hdr[auth_len] = 0;
	char host[300];
	const char *port_s = NULL;
	if (opt.host_hdr[0] == '[') {
		char *rb = strchr(opt.host_hdr, ']');
		if (!rb) {
			fprintf(stderr, "carpool-loadgen: bad IPv6 host in --url\n");
			return false;
		}
		size_t hl = (size_t)(rb - opt.host_hdr - 1);
		memcpy(host, opt.host_hdr + 1, hl);
		host[hl] = 0;
		if (rb[1] == ':')
			port_s = rb + 2;
		else if (rb[1]) {
			fprintf(stderr, "carpool-loadgen: bad --url\n");
			return false;
		}
	} else {
		char *c = strchr(opt.host_hdr, ':');
		size_t hl = c ? (size_t)(c - opt.host_hdr) : strlen(opt.host_hdr);
		memcpy(host, opt.host_hdr, hl);
		host[hl] = 0;
		if (c)
			port_s = c + 1;
	}
	long port = 80;
	if (port_s && !parse_long(port_s, &port, 1, 65535)) {
		fprintf(stderr, "carpool-loadgen: bad port in --url\n");
		return false;
	}
	memset(&opt.addr, 0, sizeof opt.addr);
	if (strcmp(host, "127.0.0.1") == 0 || strcasecmp(host, "localhost") == 0) {
		struct sockaddr_in *a = (struct sockaddr_in *)&opt.addr;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)port);
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		opt.addrlen = sizeof *a;
	} else if (strcmp(host, "::1") == 0) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&opt.addr;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)port);
		a->sin6_addr = in6addr_loopback;
		opt.addrlen = sizeof *a;
	} else {
		fprintf(stderr, "carpool-loadgen: refusing host \"%s\": only 127.0.0.1, ::1 and localhost are allowed\n",
			host);
		return false;
	}
	/* Base path: the URL's path without a trailing slash; "/v1" at its end is dropped (we add it). */
	const char *p = slash ? slash : "";
	size_t pl = strlen(p);
	while (pl && p[pl - 1] == '/')
		pl--;
	if (pl >= 3 && memcmp(p + pl - 3, "/v1", 3) == 0)
		pl -= 3;
	if (pl >= sizeof opt.path) {
		fprintf(stderr, "carpool-loadgen: --url path too long\n");
		return false;
	}
	memcpy(opt.path, p, pl);
	opt.path[pl] = 0;
	return true;
}

static void parse_args(int argc, char **argv)
{
	enum {
		O_URL = 256, O_CONC, O_REQ, O_MODE, O_MAXTOK, O_N, O_RATE, O_ARRIVAL, O_SEED, O_PREFIX, O_MODEL,
		O_KEY, O_TIMEOUT, O_DURATION, O_DETAILS, O_QUIET, O_NORETRY, O_ANSWERS, O_RAMP, O_HELP,
	};
	static const struct option lo[] = {
		{"url", required_argument, 0, O_URL},
		{"concurrency", required_argument, 0, O_CONC},
		{"requests", required_argument, 0, O_REQ},
		{"mode", required_argument, 0, O_MODE},
		{"max-tokens", required_argument, 0, O_MAXTOK},
		{"n", required_argument, 0, O_N},
		{"rate", required_argument, 0, O_RATE},
		{"arrival", required_argument, 0, O_ARRIVAL},
		{"seed", required_argument, 0, O_SEED},
		{"prefix", required_argument, 0, O_PREFIX},
		{"model", required_argument, 0, O_MODEL},
		{"api-key", required_argument, 0, O_KEY},
		{"timeout-s", required_argument, 0, O_TIMEOUT},
		{"duration-s", required_argument, 0, O_DURATION},
		{"max-details", required_argument, 0, O_DETAILS},
		{"quiet", no_argument, 0, O_QUIET},
		{"no-retry", no_argument, 0, O_NORETRY},
		{"answer-tokens", required_argument, 0, O_ANSWERS},
		{"ramp-s", required_argument, 0, O_RAMP},
		{"help", no_argument, 0, O_HELP},
		{0, 0, 0, 0},
	};
	const char *url = NULL;
	int c;
	long v;
	while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		bool ok = true;
		switch (c) {
		case O_URL: url = optarg; break;
		case O_CONC: ok = parse_long(optarg, &opt.concurrency, 1, 1000000); break;
		case O_REQ: ok = parse_long(optarg, &opt.requests, 1, 1000000000); break;
		case O_MODE:
			if (strcmp(optarg, "stream") == 0)
				opt.mode = MODE_STREAM;
			else if (strcmp(optarg, "nonstream") == 0)
				opt.mode = MODE_NONSTREAM;
			else if (strcmp(optarg, "embeddings") == 0)
				opt.mode = MODE_EMBEDDINGS;
			else
				ok = false;
			break;
		case O_MAXTOK:
			ok = parse_long(optarg, &opt.max_tokens, -1000000, 1000000);
			opt.max_tokens_set = true;
			break;
		case O_ANSWERS: ok = simgen_parse_answers(optarg, &opt.answer_min, &opt.answer_max); break;
		case O_RAMP: ok = parse_double(optarg, &opt.ramp_s, 0); break;
		case O_N: ok = parse_long(optarg, &opt.n, 1, 1024); break;
		case O_RATE: ok = parse_double(optarg, &opt.rate, 0) && opt.rate > 0; break;
		case O_ARRIVAL:
			if (strcmp(optarg, "poisson") == 0)
				opt.poisson = true;
			else if (strcmp(optarg, "fixed") == 0)
				opt.poisson = false;
			else
				ok = false;
			break;
		case O_SEED:
			ok = parse_long(optarg, &v, 0, 0x7fffffffL);
			opt.seed = (uint64_t)v;
			break;
		case O_PREFIX:
			opt.prefix = optarg;
			ok = strlen(optarg) < 400;
			break;
		case O_MODEL: opt.model = optarg; break;
		case O_KEY: opt.api_key = optarg; break;
		case O_TIMEOUT: ok = parse_double(optarg, &opt.timeout_s, 0.001); break;
		case O_DURATION: ok = parse_double(optarg, &opt.duration_s, 0.001); break;
		case O_DETAILS: ok = parse_long(optarg, &opt.max_details, 0, 1000000); break;
		case O_QUIET: opt.quiet = true; break;
		case O_NORETRY: opt.no_retry = true; break;
		case 'h':
		case O_HELP: usage(stdout); exit(0);
		default: usage(stderr); exit(2);
		}
		if (!ok) {
			fprintf(stderr, "carpool-loadgen: bad value for --%s: \"%s\"\n", lo[c - O_URL].name, optarg);
			exit(2);
		}
	}
	if (optind < argc) {
		fprintf(stderr, "carpool-loadgen: unexpected argument \"%s\"\n", argv[optind]);
		usage(stderr);
		exit(2);
	}
	if (!url) {
		fprintf(stderr, "carpool-loadgen: --url is required\n");
		usage(stderr);
		exit(2);
	}
	if (!parse_url(url))
		exit(2);
	if (opt.mode == MODE_EMBEDDINGS)
		opt.n = 1;
	if (!opt.max_tokens_set && opt.answer_max > opt.max_tokens)
		opt.max_tokens = opt.answer_max; /* let the whole range through */
}

/* ---------------------------------------------------------------- main */

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
	    (rlim_t)opt.concurrency + 64 > rl.rlim_cur)
		fprintf(stderr, "carpool-loadgen: warning: --concurrency %ld is close to the open-file limit %llu\n",
			opt.concurrency, (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);

	base = event_base_new();
	if (!base) {
		fprintf(stderr, "carpool-loadgen: event_base_new failed\n");
		return 1;
	}
	if (opt.requests > LONG_MAX / opt.concurrency) {
		fprintf(stderr, "carpool-loadgen: too many requests\n");
		return 2;
	}
	total_planned = opt.concurrency * opt.requests;
	rng_state = opt.seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
	if (!rng_state)
		rng_state = 1;

	slots = xcalloc((size_t)opt.concurrency, sizeof *slots);
	idle_stack = xcalloc((size_t)opt.concurrency, sizeof *idle_stack);
	for (long i = 0; i < opt.concurrency; i++) {
		struct slot *s = &slots[i];
		s->id = (int)i;
		s->job_k = -1;
		s->kick = event_new(base, -1, 0, on_kick, s);
		s->timer = evtimer_new(base, on_timeout, s);
		s->ch = xcalloc((size_t)opt.n, sizeof *s->ch);
		if (!s->kick || !s->timer) {
			fprintf(stderr, "carpool-loadgen: out of memory\n");
			return 1;
		}
	}
	struct event *sigint_ev = evsignal_new(base, SIGINT, on_sigint, NULL);
	struct event *sigterm_ev = evsignal_new(base, SIGTERM, on_sigint, NULL);
	evsignal_add(sigint_ev, NULL);
	evsignal_add(sigterm_ev, NULL);
	struct event *duration_ev = NULL;

	t_begin = now_ns();
	t_last_end = t_begin;
	if (opt.duration_s > 0) {
		duration_ev = evtimer_new(base, on_duration, NULL);
		struct timeval tv = {(time_t)opt.duration_s,
				     (suseconds_t)((opt.duration_s - floor(opt.duration_s)) * 1e6)};
		evtimer_add(duration_ev, &tv);
	}
	if (opt.rate <= 0) {
		active = opt.concurrency;
		for (long i = 0; i < opt.concurrency; i++) {
			double d = opt.ramp_s * (double)i / (double)opt.concurrency;
			struct timeval tv = {(time_t)d, (suseconds_t)((d - floor(d)) * 1e6)};
			event_add(slots[i].kick, &tv);
		}
	} else {
		arrival_ns = xcalloc((size_t)total_planned, sizeof *arrival_ns);
		active = 0;
		for (long i = opt.concurrency - 1; i >= 0; i--) {
			slots[i].parked = true;
			idle_stack[idle_n++] = i;
		}
		arrival_ev = evtimer_new(base, on_arrival, NULL);
		next_arrival_s = 0; /* first arrival at t=0 */
		schedule_arrival();
	}

	event_base_dispatch(base);

	double elapsed = (double)(t_last_end - t_begin) / 1e9;
	if (elapsed <= 0)
		elapsed = 1e-9;
	long completed = st_ok + st_errors + st_mismatches;
	long inflight = st_requests - completed;
	if (inflight > 0) { /* only after a second interrupt */
		st_errors += inflight;
		st_requests = st_ok + st_errors + st_mismatches;
	}
	struct farr *arrs[] = {&st_ttft, &st_gap, &st_lat};
	for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++)
		if (arrs[i]->n)
			qsort(arrs[i]->v, arrs[i]->n, sizeof(float), cmp_float);
	double tps = (double)st_tokens / elapsed;

	bool all_started = st_requests == total_planned || (opt.duration_s > 0 && stopping && !interrupted);
	bool success = st_errors == 0 && st_mismatches == 0 && inflight <= 0 && !interrupted && all_started &&
		       st_requests > 0;

	if (!opt.quiet) {
		static const char *mode_names[] = {"stream", "nonstream", "embeddings"};
		printf("carpool-loadgen: http://%s%s/v1/%s  mode=%s concurrency=%ld requests/client=%ld n=%ld "
		       "max_tokens=%ld answers=%u:%u %s\n",
		       opt.host_hdr, opt.path, opt.mode == MODE_EMBEDDINGS ? "embeddings" : "completions",
		       mode_names[opt.mode], opt.concurrency, opt.requests, opt.n, opt.max_tokens, opt.answer_min,
		       opt.answer_max, opt.rate > 0 ? "open-loop" : "closed-loop");
		if (opt.rate <= 0 && opt.ramp_s > 0)
			printf("  ramp:       clients started over %.3f s\n", opt.ramp_s);
		if (opt.rate > 0)
			printf("  arrivals:   %.1f/s %s, max backlog %ld\n", opt.rate, opt.poisson ? "poisson" : "fixed",
			       backlog_max);
		printf("  requests:   %ld of %ld planned  ok=%ld errors=%ld mismatches=%ld  (%.1f req/s)\n",
		       st_requests, total_planned, st_ok, st_errors, st_mismatches, (double)st_ok / elapsed);
		printf("  connections opened: %ld  stale-connection retries: %ld\n", st_connects, st_retries);
		if (opt.mode != MODE_EMBEDDINGS)
			printf("  tokens:     %llu (%s) expected %llu in ok responses  %.1f tokens/s\n", st_tokens,
			       opt.mode == MODE_STREAM ? "non-empty chunks" : "from simgen", st_expected_tokens, tps);
		if (opt.mode == MODE_STREAM && st_extra_tokens_note)
			printf("  note: %ld ok responses had a chunk count different from their token count (coalesced chunks)\n",
			       st_extra_tokens_note);
		printf("  ttft ms:    p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  (%zu samples)\n", pct(&st_ttft, 50),
		       pct(&st_ttft, 90), pct(&st_ttft, 99), pct(&st_ttft, 100), st_ttft.n);
		printf("  gap ms:     p50 %.3f  p90 %.3f  p99 %.3f  max %.3f  (%zu samples)\n", pct(&st_gap, 50),
		       pct(&st_gap, 90), pct(&st_gap, 99), pct(&st_gap, 100), st_gap.n);
		printf("  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n", pct(&st_lat, 50), pct(&st_lat, 90),
		       pct(&st_lat, 99), pct(&st_lat, 100));
		printf("  elapsed:    %.3f s%s%s\n", elapsed, stopping && !interrupted ? " (duration cap reached)" : "",
		       interrupted ? " (interrupted)" : "");
		if (details_printed < st_errors + st_mismatches)
			printf("  (%ld more error/mismatch details not shown; --max-details raises the limit)\n",
			       st_errors + st_mismatches - details_printed);
	}
	printf("RESULT requests=%ld ok=%ld errors=%ld mismatches=%ld tokens=%llu elapsed_s=%.3f tokens_per_s=%.1f "
	       "ttft_p50_ms=%.3f ttft_p99_ms=%.3f gap_p99_ms=%.3f latency_p50_ms=%.3f latency_p99_ms=%.3f\n",
	       st_requests, st_ok, st_errors, st_mismatches, st_tokens, elapsed, tps, pct(&st_ttft, 50),
	       pct(&st_ttft, 99), pct(&st_gap, 99), pct(&st_lat, 50), pct(&st_lat, 99));
	fflush(stdout);

	for (long i = 0; i < opt.concurrency; i++) {
		struct slot *s = &slots[i];
		close_conn(s);
		event_free(s->kick);
		event_free(s->timer);
		dbuf_free(&s->req);
		for (long j = 0; j < opt.n; j++) {
			dbuf_free(&s->ch[j].got);
			dbuf_free(&s->ch[j].exp);
		}
		free(s->ch);
		dbuf_free(&s->body);
		dbuf_free(&s->line);
		dbuf_free(&s->data);
		free(s->gaps.v);
	}
	free(slots);
	free(idle_stack);
	free(arrival_ns);
	free(st_ttft.v);
	free(st_gap.v);
	free(st_lat.v);
	if (arrival_ev)
		event_free(arrival_ev);
	if (duration_ev)
		event_free(duration_ev);
	event_free(sigint_ev);
	event_free(sigterm_ev);
	event_base_free(base);
	return success ? 0 : 1;
}
