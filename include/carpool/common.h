/* common: return codes, logging and small helpers shared by every module. */
#ifndef CARPOOL_COMMON_H
#define CARPOOL_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/time.h>

/* A small closed set of return codes (after nginx's OK / ERROR / AGAIN / DECLINED). */
enum { CP_OK = 0, CP_ERROR = -1, CP_AGAIN = -2, CP_DECLINED = -3 };

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CRIT };

/* Lines go to stderr as "time level message". */
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Counters written by one thread (their worker's) and read by others (/metrics): relaxed atomic loads
 * and stores - plain moves on x86-64, no lock, no read-modify-write - so that the reads are not data
 * races. Only the owning thread may write. */
#define CNT_ADD(x, n) __atomic_store_n(&(x), __atomic_load_n(&(x), __ATOMIC_RELAXED) + (n), __ATOMIC_RELAXED)
#define CNT_GET(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#define CNT_SET(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)

/* Intrusive doubly linked lists with a head pointer; PREV and NEXT name the node's link fields.
 * DLIST_UNLINK is harmless on a node that is not in the list (both links NULL, not the head). */
#define DLIST_PUSH(head, node, prev, next)          \
	do {                                        \
		(node)->prev = NULL;                \
		(node)->next = (head);              \
		if (head)                           \
			(head)->prev = (node);      \
		(head) = (node);                    \
	} while (0)
#define DLIST_UNLINK(head, node, prev, next)                \
	do {                                                \
		if ((node)->prev)                           \
			(node)->prev->next = (node)->next;  \
		else if ((head) == (node))                  \
			(head) = (node)->next;              \
		if ((node)->next)                           \
			(node)->next->prev = (node)->prev;  \
		(node)->prev = (node)->next = NULL;         \
	} while (0)

/* A condition that can recur thousands of times a second (descriptors exhausted, connections
 * refused) logs at most one line a second, saying how many times it happened since the last line. */
struct log_every {
	uint64_t last_us;
	unsigned long count;
};
/* Counts n occurrences; writes the line (fmt, then the count) if a second passed since the last. */
void log_every_second(struct log_every *e, unsigned long n, enum log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#define log_debug(...) do { if (log_get_level() <= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_crit(...) log_msg(LOG_CRIT, __VA_ARGS__)

/* Growable byte buffer; always NUL-terminated after the data. Aborts on out-of-memory. */
struct sbuf {
	char *data;
	size_t len, cap;
};
/* Makes room for len more bytes (and the NUL). */
void sbuf_reserve(struct sbuf *b, size_t len);
void sbuf_add(struct sbuf *b, const void *data, size_t len);
void sbuf_adds(struct sbuf *b, const char *s);
/* An HTTP header line "Name: value": ends the name at the colon and returns the value without
 * surrounding blanks; NULL when there is no name. */
char *http_header_split(char *line);
/* A Keep-Alive header value ("timeout=5, max=100"): sets *timeout_s and *max to the parameters it has
 * (negative values read as 0) and leaves the others alone. */
void http_keep_alive(const char *v, long *timeout_s, long *max);
/* Appends v in decimal (what printf's %lld writes, without printf's cost on hot paths). */
void sbuf_addll(struct sbuf *b, long long v);
void sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sbuf_reset(struct sbuf *b);
void sbuf_free(struct sbuf *b);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

uint64_t now_us(void);

/* A token bucket for a request rate (rpm a minute), refilled continuously, holding at most burst_s
 * seconds of budget (at least one request). Not thread-safe: its owner serialises its use. */
struct rate_bucket {
	long rpm;
	double cap;	/* requests it holds at most */
	double tokens;	/* requests that may start now (below zero: spent ahead) */
	uint64_t at;	/* now_us() of the last refill */
};
/* Starts full, or with one request when full is false. */
void rate_bucket_init(struct rate_bucket *b, long rpm, double burst_s, bool full, uint64_t now);
/* Seconds until a request may start (0: now). */
double rate_bucket_wait(struct rate_bucket *b, uint64_t now);
/* Spends one request (even one the bucket did not hold: the balance may go below zero). */
void rate_bucket_spend(struct rate_bucket *b, uint64_t now);
/* A duration in milliseconds as a struct timeval (for evtimer_add and bufferevent timeouts). */
static inline struct timeval tv_of_ms(long ms) { return (struct timeval){ms / 1000, (ms % 1000) * 1000}; }
/* This process's Via entry ("1.1 carpool-" and a random tag, fixed for the life of the process):
 * carpool sends it upstream and refuses a request that carries it (a proxy loop). Thread-safe. */
const char *instance_via(void);
/* The wall-clock time as 2026-01-31T12:34:56.789Z. */
void utc_now(char *buf, size_t len);

struct cJSON;
/* Sets obj[key] = item, replacing in place (keeping its position) or appending; obj owns item. */
void json_set(struct cJSON *obj, const char *key, struct cJSON *item);

/* The body of an OpenAI-style error: {"error":{"message","type","param","code"}}. Caller frees. */
char *openai_error_json(const char *message, const char *type, const char *param, const char *code);

#endif
