/* common: logging, buffers and allocation helpers. */
#include "carpool/common.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static enum log_level g_level = LOG_INFO;

void utc_now(char *buf, size_t len)
{
	struct timespec now;
	struct tm tm;
	char ts[32];
	clock_gettime(CLOCK_REALTIME, &now);
	gmtime_r(&now.tv_sec, &tm);
	strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03dZ", ts, (int)(now.tv_nsec / 1000000));
}

/* set by a reload in worker 0's thread, read by every worker: relaxed atomics */
void log_set_level(enum log_level lvl) { __atomic_store_n(&g_level, lvl, __ATOMIC_RELAXED); }
enum log_level log_get_level(void) { return __atomic_load_n(&g_level, __ATOMIC_RELAXED); }

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	static const char *names[] = {"debug", "info", "warn", "error", "crit"};
	if (lvl < log_get_level())
		return;
	char ts[40];
	utc_now(ts, sizeof ts);
	char msg[2048];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	fprintf(stderr, "%s %s %s\n", ts, names[lvl], msg);
}

static char g_via[32];
static pthread_once_t g_via_once = PTHREAD_ONCE_INIT;

static void via_init(void)
{
	unsigned char r[6] = {0};
	if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
		uint64_t t = now_us() ^ (uint64_t)getpid() << 32;
		memcpy(r, &t, sizeof r);
	}
	snprintf(g_via, sizeof g_via, "1.1 carpool-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5]);
}

const char *instance_via(void)
{
	pthread_once(&g_via_once, via_init);
	return g_via;
}

void log_every_second(struct log_every *e, unsigned long n, enum log_level lvl, const char *fmt, ...)
{
	e->count += n;
	uint64_t now = now_us();
	if (e->last_us && now - e->last_us < 1000000)
		return;
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	log_msg(lvl, "%s (%lu in the last %.1f s)", msg, e->count,
		e->last_us ? (double)(now - e->last_us) / 1e6 : 0.0);
	e->last_us = now;
	e->count = 0;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		fputs("carpool: out of memory\n", stderr);
		abort();
	}
	return p;
}

void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);
	if (!p) {
		fputs("carpool: out of memory\n", stderr);
		abort();
	}
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		fputs("carpool: out of memory\n", stderr);
		abort();
	}
	return p;
}

char *xstrdup(const char *s) { return xstrndup(s, strlen(s)); }

char *xstrndup(const char *s, size_t n)
{
	char *p = xmalloc(n + 1);
	memcpy(p, s, n);
	p[n] = 0;
	return p;
}

void sbuf_reserve(struct sbuf *b, size_t len)
{
	if (b->len + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + len + 1)
			cap *= 2;
		b->data = xrealloc(b->data, cap);
		b->cap = cap;
	}
}

void sbuf_add(struct sbuf *b, const void *data, size_t len)
{
	sbuf_reserve(b, len);
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = 0;
}

void sbuf_adds(struct sbuf *b, const char *s) { sbuf_add(b, s, strlen(s)); }

char *http_header_split(char *line)
{
	char *colon = strchr(line, ':');
	if (!colon || colon == line)
		return NULL;
	*colon = 0;
	char *v = colon + 1;
	while (*v == ' ' || *v == '\t')
		v++;
	size_t vl = strlen(v);
	while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
		v[--vl] = 0;
	return v;
}

void http_keep_alive(const char *v, long *timeout_s, long *max)
{
	for (const char *p = v; *p; p += strcspn(p, ",")) {
		p += strspn(p, " \t,");
		long *out = !strncasecmp(p, "timeout=", 8) ? timeout_s : !strncasecmp(p, "max=", 4) ? max : NULL;
		if (out) {
			long n = strtol(strchr(p, '=') + 1, NULL, 10);
			*out = n > 0 ? n : 0;
		}
	}
}

void sbuf_addll(struct sbuf *b, long long v)
{
	char d[24], *p = d + sizeof d;
	unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
	do
		*--p = (char)('0' + u % 10);
	while ((u /= 10));
	if (v < 0)
		*--p = '-';
	sbuf_add(b, p, (size_t)(d + sizeof d - p));
}

void sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	sbuf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void sbuf_reset(struct sbuf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = 0;
}

void sbuf_free(struct sbuf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

void rate_bucket_init(struct rate_bucket *b, long rpm, double burst_s, bool full, uint64_t now)
{
	double cap = (double)rpm * burst_s / 60.0;
	b->rpm = rpm;
	b->cap = cap > 1.0 ? cap : 1.0;
	b->tokens = full ? b->cap : 1.0;
	b->at = now;
}

static void rate_bucket_refill(struct rate_bucket *b, uint64_t now)
{
	b->tokens += (double)(now - b->at) / 1e6 * (double)b->rpm / 60.0;
	if (b->tokens > b->cap)
		b->tokens = b->cap;
	b->at = now;
}

double rate_bucket_wait(struct rate_bucket *b, uint64_t now)
{
	rate_bucket_refill(b, now);
	return b->tokens < 1.0 ? (1.0 - b->tokens) * 60.0 / (double)b->rpm : 0;
}

void rate_bucket_spend(struct rate_bucket *b, uint64_t now)
{
	rate_bucket_refill(b, now);
	b->tokens -= 1.0;
}

char *openai_error_json(const char *message, const char *type, const char *param, const char *code)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *err = cJSON_AddObjectToObject(root, "error");
	cJSON_AddStringToObject(err, "message", message);
	cJSON_AddStringToObject(err, "type", type);
	if (param)
		cJSON_AddStringToObject(err, "param", param);
	else
		cJSON_AddNullToObject(err, "param");
	if (code)
		cJSON_AddStringToObject(err, "code", code);
	else
		cJSON_AddNullToObject(err, "code");
	char *s = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	return s;
}

void json_set(cJSON *obj, const char *key, cJSON *item)
{
	if (cJSON_GetObjectItemCaseSensitive(obj, key))
		cJSON_ReplaceItemInObjectCaseSensitive(obj, key, item);
	else
		cJSON_AddItemToObject(obj, key, item);
}
