/* auth: client keys and their limits. */
#include "carpool/auth.h"

#include <ctype.h>
#include <pthread.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* One lock for every worker's use of the keys: admission is a few instructions, so it is cheap. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

/* name: "" for key#N, N its place among every key (auth.keys, auth.clients, keys_file in turn). */
static void add_key(struct auth_table *t, const char *key, const char *name, long max_concurrent, long rpm)
{
	struct auth_key *k = xcalloc(1, sizeof *k);
	k->key = xstrdup(key);
	if (name[0])
		snprintf(k->name, sizeof k->name, "%s", name);
	else
		snprintf(k->name, sizeof k->name, "key#%d", t->n + 1);
	k->max_concurrent = max_concurrent;
	k->rpm = rpm;
	if (rpm)
		rate_bucket_init(&k->budget, rpm, 10, true, now_us());
	k->refs = 1;
	t->keys = xrealloc(t->keys, (size_t)(t->n + 1) * sizeof *t->keys);
	t->keys[t->n++] = k;
}

static int load_file(struct auth_table *t, const char *cfgpath, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "%s: auth.keys_file %s: %s", cfgpath, path, strerror(errno));
		return CP_ERROR;
	}
	char line[1024];
	int lineno = 0;
	while (fgets(line, sizeof line, f)) {
		lineno++;
		char *save = NULL;
		char *key = strtok_r(line, " \t\r\n", &save);
		if (!key || key[0] == '#')
			continue;
		long mc = 0, rpm = 0;
		for (char *tok; (tok = strtok_r(NULL, " \t\r\n", &save));) {
			char *end;
			if (!strncmp(tok, "max_concurrent=", 15))
				mc = strtol(tok + 15, &end, 10);
			else if (!strncmp(tok, "rpm=", 4))
				rpm = strtol(tok + 4, &end, 10);
			else {
				snprintf(err, errlen, "%s:%d:1: expected max_concurrent=N or rpm=N after the key", path, lineno);
				fclose(f);
				return CP_ERROR;
			}
			if (*end || mc < 0 || rpm < 0) {
				snprintf(err, errlen, "%s:%d:1: bad number", path, lineno);
				fclose(f);
				return CP_ERROR;
			}
		}
		add_key(t, key, "", mc, rpm);
	}
	fclose(f);
	return CP_OK;
}

int auth_load(const struct config *cfg, struct auth_table **out, char *err, size_t errlen)
{
	struct auth_table *t = xcalloc(1, sizeof *t);
	for (int i = 0; i < cfg->auth.nkeys; i++)
		add_key(t, cfg->auth.keys[i], "", 0, 0);
	for (int i = 0; i < cfg->auth.nclients; i++)
		add_key(t, cfg->auth.clients[i].key, cfg->auth.clients[i].name, cfg->auth.clients[i].max_concurrent, cfg->auth.clients[i].rate_limit_rpm);
	if (cfg->auth.keys_file[0] && load_file(t, cfg->path, cfg->auth.keys_file, err, errlen) != CP_OK) {
		auth_free(t);
		return CP_ERROR;
	}
	*out = t;
	return CP_OK;
}

static void key_unref(struct auth_key *k)
{
	if (--k->refs == 0) {
		OPENSSL_cleanse(k->key, strlen(k->key));
		free(k->key);
		free(k);
	}
}

void auth_free(struct auth_table *t)
{
	if (!t)
		return;
	for (int i = 0; i < t->n; i++)
		key_unref(t->keys[i]);
	free(t->keys);
	free(t);
}

struct auth_key *auth_lookup(const struct auth_table *t, const char *h)
{
	if (!h || strncasecmp(h, "Bearer ", 7))
		return NULL;
	const char *key = h + 7;
	size_t klen = strlen(key);
	struct auth_key *found = NULL;
	for (int i = 0; i < t->n; i++) {
		const char *want = t->keys[i]->key;
		/* no early exit: every key is compared; lengths are not secret */
		if (strlen(want) == klen && CRYPTO_memcmp(want, key, klen) == 0)
			found = t->keys[i];
	}
	return found;
}

enum auth_verdict auth_admit(struct auth_key *k, uint64_t now, long *retry_after_s)
{
	if (k->max_concurrent && k->active >= k->max_concurrent) {
		*retry_after_s = 1;
		return AUTH_CONCURRENCY;
	}
	if (k->rpm) {
		double wait = rate_bucket_wait(&k->budget, now);
		if (wait > 0) {
			*retry_after_s = (long)wait + 1;
			return AUTH_RATE;
		}
		rate_bucket_spend(&k->budget, now);
	}
	k->active++;
	k->refs++;
	return AUTH_OK;
}

void auth_release(struct auth_key *k)
{
	pthread_mutex_lock(&g_mu);
	k->active--;
	key_unref(k);
	pthread_mutex_unlock(&g_mu);
}

bool auth_enabled(struct auth_table *const *slot)
{
	pthread_mutex_lock(&g_mu);
	bool on = *slot && (*slot)->n > 0;
	pthread_mutex_unlock(&g_mu);
	return on;
}

enum auth_verdict auth_check(struct auth_table *const *slot, const char *h, uint64_t now, struct auth_key **k,
			     long *retry_after_s)
{
	pthread_mutex_lock(&g_mu);
	enum auth_verdict v = AUTH_UNKNOWN;
	*k = *slot ? auth_lookup(*slot, h) : NULL;
	if (*k)
		v = auth_admit(*k, now, retry_after_s);
	pthread_mutex_unlock(&g_mu);
	return v;
}

void auth_swap(struct auth_table **slot, struct auth_table *t)
{
	pthread_mutex_lock(&g_mu);
	struct auth_table *old = *slot;
	*slot = t;
	auth_free(old);
	pthread_mutex_unlock(&g_mu);
}
