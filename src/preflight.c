/* preflight: the checks a start would make on what the config names, made without starting. */
#include "carpool/preflight.h"
#include "carpool/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

struct report {
	const char *file;
	char *err;
	size_t errlen, used;
	int n;
};

static void problem(struct report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct report *r, const char *fmt, ...)
{
	r->n++;
	if (r->used + 1 >= r->errlen)
		return;
	int k = snprintf(r->err + r->used, r->errlen - r->used, "%s%s: ", r->used ? "\n" : "", r->file);
	if (k > 0 && (size_t)k < r->errlen - r->used) {
		r->used += (size_t)k;
		va_list ap;
		va_start(ap, fmt);
		k = vsnprintf(r->err + r->used, r->errlen - r->used, fmt, ap);
		va_end(ap);
		if (k > 0)
			r->used += (size_t)k < r->errlen - r->used ? (size_t)k : r->errlen - r->used - 1;
	}
}

/* The last OpenSSL error in words ("no error" if the queue is empty); the queue is cleared. */
static const char *ssl_reason(void)
{
	static char buf[256];
	unsigned long e = ERR_peek_last_error();
	if (e)
		ERR_error_string_n(e, buf, sizeof buf);
	else
		snprintf(buf, sizeof buf, "no error");
	ERR_clear_error();
	return buf;
}

/* A file that must exist and be readable; false (reported) if not. */
static bool readable(struct report *r, const char *what, const char *path)
{
	struct stat st;
	if (stat(path, &st) != 0 || access(path, R_OK) != 0) {
		problem(r, "%s %s: %s", what, path, strerror(errno));
		return false;
	}
	if (!S_ISREG(st.st_mode)) {
		problem(r, "%s %s: not a regular file", what, path);
		return false;
	}
	return true;
}

/* The directory part of path must exist, be a directory and be writable. */
static void dir_writable(struct report *r, const char *what, const char *path)
{
	char dir[CFG_STR];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (!slash)
		snprintf(dir, sizeof dir, ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	struct stat st;
	if (stat(dir, &st) != 0)
		problem(r, "%s %s: directory %s: %s", what, path, dir, strerror(errno));
	else if (!S_ISDIR(st.st_mode))
		problem(r, "%s %s: %s is not a directory", what, path, dir);
	else if (access(dir, W_OK | X_OK) != 0)
		problem(r, "%s %s: directory %s: %s", what, path, dir, strerror(errno));
}

static void check_listener(struct report *r, int i, const struct cfg_listen *l)
{
	char what[64];
	snprintf(what, sizeof what, "listen[%d]", i);
	if (!strncmp(l->address, "unix:", 5))
		dir_writable(r, what, l->address + 5);
	if (!l->tls.cert[0])
		return;
	snprintf(what, sizeof what, "listen[%d].tls", i);
	bool ok = readable(r, what, l->tls.cert);
	ok = readable(r, what, l->tls.key) && ok;
	if (!ok)
		return;
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		problem(r, "%s: cannot create a TLS context: %s", what, ssl_reason());
		return;
	}
	if (SSL_CTX_use_certificate_chain_file(ctx, l->tls.cert) != 1)
		problem(r, "%s: cert %s is not a PEM certificate chain: %s", what, l->tls.cert, ssl_reason());
	else if (SSL_CTX_use_PrivateKey_file(ctx, l->tls.key, SSL_FILETYPE_PEM) != 1)
		problem(r, "%s: key %s cannot be used with cert %s (not a PEM private key, or not the certificate's): %s",
			what, l->tls.key, l->tls.cert, ssl_reason());
	else if (SSL_CTX_check_private_key(ctx) != 1)
		problem(r, "%s: key %s does not match cert %s", what, l->tls.key, l->tls.cert);
	SSL_CTX_free(ctx);
}

static void check_upstream(struct report *r, int i, const struct cfg_upstream *u)
{
	if (u->api_key_env[0]) {
		const char *v = getenv(u->api_key_env);
		if (!v || !*v)
			problem(r, "upstreams[%d].api_key_env: %s is not set in the environment (or is empty)", i,
				u->api_key_env);
	}
	if (strncmp(u->url, "https://", 8) || !u->tls.verify || !u->tls.ca_file[0])
		return;
	char what[64];
	snprintf(what, sizeof what, "upstreams[%d].tls.ca_file", i);
	if (!readable(r, what, u->tls.ca_file))
		return;
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (ctx && SSL_CTX_load_verify_locations(ctx, u->tls.ca_file, NULL) != 1)
		problem(r, "%s %s: no PEM certificate could be loaded: %s", what, u->tls.ca_file, ssl_reason());
	SSL_CTX_free(ctx);
}

int preflight(const struct config *cfg, char *err, size_t errlen)
{
	struct report r = {.file = cfg->path, .err = err, .errlen = errlen};
	if (errlen)
		err[0] = 0;
	for (int i = 0; i < cfg->nlisten; i++)
		check_listener(&r, i, &cfg->listen[i]);
	for (int i = 0; i < cfg->nupstreams; i++)
		check_upstream(&r, i, &cfg->upstreams[i]);
	const char *acc = cfg->log.access;
	if (acc[0] && strcmp(acc, "off") && strcmp(acc, "stdout") && strcmp(acc, "stderr")) {
		struct stat st;
		if (stat(acc, &st) == 0 && access(acc, W_OK) != 0)
			problem(&r, "log.access %s: %s", acc, strerror(errno));
		else if (stat(acc, &st) != 0)
			dir_writable(&r, "log.access", acc);
	}
	return r.n;
}
