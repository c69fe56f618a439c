/* auth: the client keys carpool accepts, each with optional limits (concurrent requests, requests
 * per minute). Keys come from auth.keys, auth.clients and auth.keys_file; they are compared in
 * constant time and never logged. */
#ifndef CARPOOL_AUTH_H
#define CARPOOL_AUTH_H

#include "carpool/common.h"
#include "carpool/config.h"

struct auth_key {
	char *key;
	char name[64];	     /* what the access log names it by: its configured name, or key#N */
	long max_concurrent; /* 0: no limit */
	long rpm;	     /* 0: no limit */
	long active;
	struct rate_bucket budget; /* rpm: holds 10 s of requests */
	int refs;	     /* the table's, plus one per request in flight */
};

struct auth_table {
	struct auth_key **keys;
	int n;
};

enum auth_verdict { AUTH_OK, AUTH_UNKNOWN, AUTH_CONCURRENCY, AUTH_RATE };

/* Builds the table from cfg (reading keys_file: one key a line, optionally followed by
 * max_concurrent=N and rpm=N; # comments). CP_ERROR with err set if the file is unreadable or bad. */
int auth_load(const struct config *cfg, struct auth_table **out, char *err, size_t errlen);
/* Drops the table's references; keys still held by requests live until those end. */
void auth_free(struct auth_table *t);
/* The key matching `Authorization: Bearer KEY` header h, or NULL. Every key is compared. */
struct auth_key *auth_lookup(const struct auth_table *t, const char *h);
/* Admits one request (taking a reference) or says which limit refused it, with the seconds
 * after which to retry. */
enum auth_verdict auth_admit(struct auth_key *k, uint64_t now, long *retry_after_s);
/* The admitted request ended. Thread-safe. */
void auth_release(struct auth_key *k);

/* The worker-facing entry points: the table in *slot is shared by every worker, under one lock. */
bool auth_enabled(struct auth_table *const *slot);
/* Looks up header h and admits the request: AUTH_OK sets *k (release it with auth_release). */
enum auth_verdict auth_check(struct auth_table *const *slot, const char *h, uint64_t now, struct auth_key **k,
			     long *retry_after_s);
/* Replaces the table (a reload); the old one is dropped. */
void auth_swap(struct auth_table **slot, struct auth_table *t);

#endif
