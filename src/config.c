/* config: YAML -> struct config, driven by one table of keys. */
#include "carpool/config.h"
#include "carpool/common.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include <event2/util.h>
#include <sys/socket.h>
#include <sys/stat.h>

enum cfg_type { CT_INT, CT_BOOL, CT_STR, CT_ENUM, CT_STRLIST, CT_SECTION, CT_LIST };

struct cfg_section;

struct cfg_key {
	const char *name;
	enum cfg_type type;
	size_t off;		/* of the value in its section's struct */
	size_t size;		/* CT_STR: buffer size; CT_STRLIST: element size */
	long min, max;		/* CT_INT bounds; CT_STRLIST / CT_LIST: max items in max */
	const char *def;	/* default, as text */
	const char *const *names; /* CT_ENUM */
	const struct cfg_section *sub; /* CT_SECTION, CT_LIST */
	size_t count_off;	/* CT_STRLIST, CT_LIST: offset of the int count */
};

struct cfg_section {
	const struct cfg_key *keys;
	size_t nkeys;
	size_t elem_size; /* of its struct: a CT_LIST element's size */
};

#define NKEYS(a) (sizeof(a) / sizeof((a)[0]))

/* One constructor per type. A key is named as its field in the section's struct (T), so that the
 * YAML key, the field and the table cannot drift apart. */
#define KEY(T, m, ty) .name = #m, .type = ty, .off = offsetof(T, m)
#define KEY_INT(T, m, lo, hi, dflt) {KEY(T, m, CT_INT), .min = lo, .max = hi, .def = dflt}
#define KEY_BOOL(T, m, dflt) {KEY(T, m, CT_BOOL), .def = dflt}
#define KEY_STR(T, m, dflt) {KEY(T, m, CT_STR), .size = sizeof(((T *)0)->m), .def = dflt}
#define KEY_ENUM(T, m, choices, dflt) {KEY(T, m, CT_ENUM), .names = choices, .def = dflt}
/* a list of strings: at most nmax, counted in the int field count; dflt: the one item by default */
#define KEY_STRLIST(T, m, count, nmax, dflt) \
	{KEY(T, m, CT_STRLIST), .size = sizeof(((T *)0)->m[0]), .max = nmax, .def = dflt, .count_off = offsetof(T, count)}
#define KEY_SECTION(T, m, section) {KEY(T, m, CT_SECTION), .sub = &section}
/* a list of sections: at most nmax, counted in the int field count */
#define KEY_LIST(T, m, count, nmax, section) \
	{KEY(T, m, CT_LIST), .max = nmax, .sub = &section, .count_off = offsetof(T, count)}
#define SECTION(keys, T) {keys, NKEYS(keys), sizeof(T)}

static const char *const dialect_names[] = {"auto", "openai", "vllm", "llamacpp", NULL};
static const char *const policy_names[] = {"adaptive", "fixed", NULL};
static const char *const queue_names[] = {"shared", "per_worker", NULL};
static const char *const level_names[] = {"debug", "info", "warn", "error", "crit", NULL};
static const char *const serve_names[] = {"all", "api", "ops", NULL};
static const char *const io_uring_names[] = {"auto", "on", "off", NULL};

static const struct cfg_key tls_server_keys[] = {
	KEY_STR(struct cfg_tls_server, cert, ""),
	KEY_STR(struct cfg_tls_server, key, ""),
};
static const struct cfg_section tls_server_sec = SECTION(tls_server_keys, struct cfg_tls_server);

static const struct cfg_key listen_keys[] = {
	KEY_STR(struct cfg_listen, address, ""),
	KEY_STR(struct cfg_listen, mode, "0660"),
	KEY_ENUM(struct cfg_listen, serve, serve_names, "all"),
	KEY_SECTION(struct cfg_listen, tls, tls_server_sec),
};
static const struct cfg_section listen_sec = SECTION(listen_keys, struct cfg_listen);

static const struct cfg_key tls_client_keys[] = {
	KEY_BOOL(struct cfg_tls_client, verify, "true"),
	KEY_STR(struct cfg_tls_client, ca_file, ""),
};
static const struct cfg_section tls_client_sec = SECTION(tls_client_keys, struct cfg_tls_client);

#define U struct cfg_upstream
static const struct cfg_key upstream_keys[] = {
	KEY_STR(U, url, ""),
	KEY_ENUM(U, dialect, dialect_names, "auto"),
	KEY_STR(U, api_key_env, ""),
	KEY_INT(U, max_sequences, 0, 1000000, "0"),
	KEY_INT(U, max_inflight, 0, 1000000, "0"),
	KEY_INT(U, rate_limit_rpm, 0, 100000000, "0"),
	KEY_INT(U, weight, 1, 1000, "1"),
	KEY_STRLIST(U, models, nmodels, CFG_MAX_MODELS, "*"),
	KEY_INT(U, max_inputs_per_call, 1, 1000000, "2048"),
	KEY_INT(U, max_tokens_per_call, 1, 100000000, "300000"),
	KEY_STR(U, health_path, ""),
	KEY_INT(U, health_interval_ms, 100, 3600000, "5000"),
	KEY_INT(U, load_poll_ms, 0, 3600000, "500"),
	KEY_INT(U, keepalive_ms, 0, 3600000, "4000"),
	KEY_INT(U, keepalive_conns, 0, 4096, "0"),
	KEY_SECTION(U, tls, tls_client_sec),
};
#undef U
static const struct cfg_section upstream_sec = SECTION(upstream_keys, struct cfg_upstream);

static const struct cfg_key batching_keys[] = {
	KEY_ENUM(struct cfg_batching, policy, policy_names, "adaptive"),
	KEY_INT(struct cfg_batching, max_wait_ms, 0, 60000, "10"),
	KEY_INT(struct cfg_batching, max_batch_size, 1, 4096, "64"),
	KEY_ENUM(struct cfg_batching, queue, queue_names, "shared"),
};
static const struct cfg_section batching_sec = SECTION(batching_keys, struct cfg_batching);

static const struct cfg_key client_keys[] = {
	KEY_STR(struct cfg_client, key, ""),
	KEY_STR(struct cfg_client, name, ""),
	KEY_INT(struct cfg_client, max_concurrent, 0, 1000000, "0"),
	KEY_INT(struct cfg_client, rate_limit_rpm, 0, 100000000, "0"),
};
static const struct cfg_section client_sec = SECTION(client_keys, struct cfg_client);

static const struct cfg_key auth_keys[] = {
	KEY_STRLIST(struct cfg_auth, keys, nkeys, CFG_MAX_KEYS, NULL),
	KEY_STR(struct cfg_auth, keys_file, ""),
	KEY_LIST(struct cfg_auth, clients, nclients, CFG_MAX_KEYS, client_sec),
};
static const struct cfg_section auth_sec = SECTION(auth_keys, struct cfg_auth);

#define L struct cfg_limits
static const struct cfg_key limits_keys[] = {
	KEY_INT(L, max_body_bytes, 1024, 1L << 30, "4194304"),
	KEY_INT(L, max_header_bytes, 1024, 1L << 20, "65536"),
	KEY_INT(L, max_clients, 1, 1000000, "10000"),
	KEY_INT(L, max_queue, 1, 10000000, "10000"),
	KEY_INT(L, max_client_buffer, 4096, 1L << 30, "1048576"),
};
#undef L
static const struct cfg_section limits_sec = SECTION(limits_keys, struct cfg_limits);

#define T struct cfg_timeouts
static const struct cfg_key timeouts_keys[] = {
	KEY_INT(T, connect_ms, 1, 600000, "2000"),
	KEY_INT(T, first_byte_ms, 1, 3600000, "120000"),
	KEY_INT(T, idle_ms, 1, 3600000, "60000"),
	KEY_INT(T, client_idle_ms, 1, 3600000, "60000"),
	KEY_INT(T, client_header_ms, 1, 3600000, "30000"),
	KEY_INT(T, client_body_ms, 1, 3600000, "60000"),
	KEY_INT(T, drain_ms, 0, 3600000, "10000"),
	KEY_INT(T, sse_keepalive_ms, 0, 3600000, "15000"),
};
#undef T
static const struct cfg_section timeouts_sec = SECTION(timeouts_keys, struct cfg_timeouts);

static const struct cfg_key log_keys[] = {
	KEY_ENUM(struct cfg_log, level, level_names, "info"),
	KEY_STR(struct cfg_log, access, "off"),
};
static const struct cfg_section log_sec = SECTION(log_keys, struct cfg_log);

#define C struct config
static const struct cfg_key root_keys[] = {
	KEY_INT(C, workers, 0, 64, "0"),
	KEY_ENUM(C, io_uring, io_uring_names, "auto"),
	KEY_LIST(C, listen, nlisten, CFG_MAX_LISTEN, listen_sec),
	KEY_LIST(C, upstreams, nupstreams, CFG_MAX_UPSTREAMS, upstream_sec),
	KEY_SECTION(C, batching, batching_sec),
	KEY_SECTION(C, auth, auth_sec),
	KEY_SECTION(C, limits, limits_sec),
	KEY_SECTION(C, timeouts, timeouts_sec),
	KEY_SECTION(C, log, log_sec),
};
#undef C
static const struct cfg_section root_sec = SECTION(root_keys, struct config);

struct loader {
	const char *name;
	yaml_document_t *doc;
	char *err;
	size_t errlen;
	int nerr;		/* errors so far: each is one line of err, all are reported */
	yaml_node_t *listen_nodes[CFG_MAX_LISTEN]; /* each list item's mapping, for messages */
	yaml_node_t *upstream_nodes[CFG_MAX_UPSTREAMS];
};

static int fail(struct loader *ld, const yaml_node_t *node, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct loader *ld, const yaml_node_t *node, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	size_t used = strlen(ld->err);
	if (ld->nerr++ == 0)
		used = 0;
	else if (used + 1 < ld->errlen)
		ld->err[used++] = '\n';
	if (used < ld->errlen)
		snprintf(ld->err + used, ld->errlen - used, "%s:%zu:%zu: %s", ld->name,
			 node ? node->start_mark.line + 1 : 0, node ? node->start_mark.column + 1 : 0, msg);
	return CP_ERROR;
}

/* Edit distance of two short names (for "did you mean"); saturates at 9. */
static unsigned name_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la > 63 || lb > 63)
		return 9;
	unsigned row[64];
	for (size_t j = 0; j <= lb; j++)
		row[j] = (unsigned)j;
	for (size_t i = 1; i <= la; i++) {
		unsigned diag = row[0];
		row[0] = (unsigned)i;
		for (size_t j = 1; j <= lb; j++) {
			unsigned up = row[j];
			unsigned best = diag + (a[i - 1] != b[j - 1]);
			if (row[j] + 1 < best)
				best = row[j] + 1;
			if (row[j - 1] + 1 < best)
				best = row[j - 1] + 1;
			row[j] = best;
			diag = up;
		}
	}
	return row[lb] > 9 ? 9 : row[lb];
}

static int set_scalar(struct loader *ld, const struct cfg_key *k, void *base, const char *text,
		      const yaml_node_t *node)
{
	char *p = (char *)base + k->off;
	switch (k->type) {
	case CT_INT: {
		char *end;
		errno = 0;
		long v = strtol(text, &end, 10);
		if (errno || end == text || *end)
			return fail(ld, node, "%s: expected an integer, got \"%s\"", k->name, text);
		if (v < k->min || v > k->max)
			return fail(ld, node, "%s: %ld is out of range [%ld, %ld]", k->name, v, k->min, k->max);
		*(long *)p = v;
		return CP_OK;
	}
	case CT_BOOL:
		if (!strcmp(text, "true") || !strcmp(text, "yes") || !strcmp(text, "on"))
			*(bool *)p = true;
		else if (!strcmp(text, "false") || !strcmp(text, "no") || !strcmp(text, "off"))
			*(bool *)p = false;
		else
			return fail(ld, node, "%s: expected true or false, got \"%s\"", k->name, text);
		return CP_OK;
	case CT_STR:
		if (strlen(text) >= k->size)
			return fail(ld, node, "%s: value longer than %zu bytes", k->name, k->size - 1);
		strcpy(p, text);
		return CP_OK;
	case CT_ENUM:
		for (long i = 0; k->names[i]; i++) {
			if (!strcmp(k->names[i], text)) {
				*(long *)p = i;
				return CP_OK;
			}
		}
		{
			char list[256] = "";
			for (int i = 0; k->names[i]; i++) {
				strncat(list, i ? ", " : "", sizeof list - strlen(list) - 1);
				strncat(list, k->names[i], sizeof list - strlen(list) - 1);
			}
			return fail(ld, node, "%s: \"%s\" is not one of: %s", k->name, text, list);
		}
	default:
		return fail(ld, node, "%s: internal: not a scalar key", k->name);
	}
}

static void apply_defaults(const struct cfg_section *sec, void *base)
{
	for (size_t i = 0; i < sec->nkeys; i++) {
		const struct cfg_key *k = &sec->keys[i];
		char *p = (char *)base + k->off;
		switch (k->type) {
		case CT_SECTION:
			apply_defaults(k->sub, p);
			break;
		case CT_LIST:
			*(int *)((char *)base + k->count_off) = 0;
			break;
		case CT_STRLIST:
			*(int *)((char *)base + k->count_off) = 0;
			if (k->def) {
				snprintf(p, k->size, "%s", k->def);
				*(int *)((char *)base + k->count_off) = 1;
			}
			break;
		default: {
			char err[64];
			struct loader ld = {.name = "default", .err = err, .errlen = sizeof err};
			if (set_scalar(&ld, k, base, k->def, NULL) != CP_OK)
				abort(); /* a bad default is a programming error */
		}
		}
	}
}

static int load_section(struct loader *ld, const struct cfg_section *sec, void *base, yaml_node_t *map,
			const char *where);

static int load_value(struct loader *ld, const struct cfg_key *k, void *base, yaml_node_t *v, const char *where)
{
	char path[160];
	snprintf(path, sizeof path, "%s%s%s", where, *where ? "." : "", k->name);
	char *p = (char *)base + k->off;
	switch (k->type) {
	case CT_SECTION:
		if (v->type != YAML_MAPPING_NODE)
			return fail(ld, v, "%s: expected a mapping", k->name);
		return load_section(ld, k->sub, p, v, path);
	case CT_LIST:
	case CT_STRLIST: {
		if (v->type != YAML_SEQUENCE_NODE)
			return fail(ld, v, "%s: expected a list", k->name);
		int *count = (int *)((char *)base + k->count_off);
		*count = 0;
		int rc = CP_OK;
		for (yaml_node_item_t *it = v->data.sequence.items.start; it < v->data.sequence.items.top; it++) {
			yaml_node_t *item = yaml_document_get_node(ld->doc, *it);
			if (*count >= k->max)
				return fail(ld, item, "%s: more than %ld items", k->name, k->max);
			if (k->type == CT_STRLIST) {
				if (item->type != YAML_SCALAR_NODE)
					return fail(ld, item, "%s: expected a list of strings", k->name);
				const char *s = (const char *)item->data.scalar.value;
				if (strlen(s) >= k->size)
					return fail(ld, item, "%s: item longer than %zu bytes", k->name, k->size - 1);
				strcpy(p + (size_t)*count * k->size, s);
			} else {
				if (item->type != YAML_MAPPING_NODE)
					return fail(ld, item, "%s: expected a list of mappings", k->name);
				if (k->sub == &listen_sec)
					ld->listen_nodes[*count] = item;
				else if (k->sub == &upstream_sec)
					ld->upstream_nodes[*count] = item;
				void *elem = p + (size_t)*count * k->sub->elem_size;
				memset(elem, 0, k->sub->elem_size);
				apply_defaults(k->sub, elem);
				char ipath[176];
				snprintf(ipath, sizeof ipath, "%s[%d]", path, *count);
				if (load_section(ld, k->sub, elem, item, ipath) != CP_OK)
					rc = CP_ERROR; /* the next items are still read: every error is reported */
			}
			(*count)++;
		}
		return rc;
	}
	default:
		if (v->type != YAML_SCALAR_NODE)
			return fail(ld, v, "%s: expected a single value", k->name);
		return set_scalar(ld, k, base, (const char *)v->data.scalar.value, v);
	}
}

static int load_section(struct loader *ld, const struct cfg_section *sec, void *base, yaml_node_t *map,
			const char *where)
{
	bool seen[32] = {false};
	int rc = CP_OK;
	for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
		yaml_node_t *kn = yaml_document_get_node(ld->doc, pr->key);
		yaml_node_t *vn = yaml_document_get_node(ld->doc, pr->value);
		if (kn->type != YAML_SCALAR_NODE) {
			rc = fail(ld, kn, "keys must be plain names");
			continue;
		}
		const char *name = (const char *)kn->data.scalar.value;
		size_t i;
		for (i = 0; i < sec->nkeys; i++)
			if (!strcmp(sec->keys[i].name, name))
				break;
		if (i == sec->nkeys) {
			const char *near = NULL;
			size_t len = strlen(name);
			unsigned best = len / 3 + 1 > 3 ? (unsigned)(len / 3 + 1) : 3; /* only a close name */
			for (size_t j = 0; j < sec->nkeys; j++) {
				unsigned d = name_distance(name, sec->keys[j].name);
				if (d < best) {
					best = d;
					near = sec->keys[j].name;
				}
			}
			rc = fail(ld, kn, "unknown key \"%s\" %s%s%s%s%s", name, *where ? "in " : "at the top level",
				  where, near ? "; did you mean \"" : "", near ? near : "", near ? "\"?" : "");
			continue;
		}
		if (seen[i]) {
			rc = fail(ld, kn, "duplicate key \"%s\"", name);
			continue;
		}
		seen[i] = true;
		if (load_value(ld, &sec->keys[i], base, vn, where) != CP_OK)
			rc = CP_ERROR;
	}
	return rc;
}

/* The value node of key in map (one level, or "a.b" for a nested mapping); map itself if absent. */
static yaml_node_t *value_node(struct loader *ld, yaml_node_t *map, const char *key)
{
	if (!map || map->type != YAML_MAPPING_NODE)
		return map;
	const char *dot = strchr(key, '.');
	size_t klen = dot ? (size_t)(dot - key) : strlen(key);
	for (yaml_node_pair_t *pr = map->data.mapping.pairs.start; pr < map->data.mapping.pairs.top; pr++) {
		yaml_node_t *kn = yaml_document_get_node(ld->doc, pr->key);
		if (kn->type == YAML_SCALAR_NODE && strlen((const char *)kn->data.scalar.value) == klen &&
		    !strncmp((const char *)kn->data.scalar.value, key, klen)) {
			yaml_node_t *v = yaml_document_get_node(ld->doc, pr->value);
			return dot ? value_node(ld, v, dot + 1) : v;
		}
	}
	return map;
}

/* A listen address: unix:/path, host:port or [v6]:port (port 0: any, numeric addresses only). NULL
 * when it is one; else what is wrong with it, in words. */
static const char *address_problem(const char *a)
{
	if (!strncmp(a, "unix:", 5)) {
		if (a[5] != '/')
			return "a unix socket needs an absolute path (unix:/run/carpool/carpool.sock)";
		return strlen(a + 5) < 100 ? NULL : "a unix socket path must be shorter than 100 bytes";
	}
	char buf[CFG_STR];
	snprintf(buf, sizeof buf, "%s", a);
	char *colon = strrchr(buf, ':');
	if (!colon || (buf[0] == '[' && !strstr(buf, "]:")))
		return "a port is required: host:port, [v6]:port or unix:/path";
	char *end;
	errno = 0;
	long port = strtol(colon + 1, &end, 10);
	if (colon[1] == 0 || *end || errno)
		return "the port is not a number";
	if (port < 0 || port > 65535)
		return "the port is out of range (0-65535)";
	*colon = 0;
	struct sockaddr_storage ss;
	int len = sizeof ss;
	char numeric[CFG_STR + 8];
	snprintf(numeric, sizeof numeric, "%s:1", buf);
	if (evutil_parse_sockaddr_port(numeric, (struct sockaddr *)&ss, &len) == 0)
		return NULL;
	if (port == 0)
		return "port 0 (any free port) needs a numeric address such as 127.0.0.1:0 or [::1]:0: a host name "
		       "may resolve to several addresses, each of which would get another port";
	if (!buf[0])
		return "the host is missing: host:port, [v6]:port or unix:/path";
	for (char *p = buf; *p; p++)
		if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '.'))
			return "the host is neither an IP address nor a host name";
	return NULL; /* a host name: resolved when the listener opens */
}

/* How much of url to keep when its path ends in a /v1 segment (trailing slashes aside), else 0:
 * carpool appends each request's own /v1/... path, so such a url would ask for /v1/v1/completions. */
static size_t url_before_v1(const char *url, const char *host)
{
	const char *path = strchr(host, '/');
	if (!path)
		return 0;
	size_t start = (size_t)(path - url), n = strlen(url);
	while (n > start && url[n - 1] == '/')
		n--;
	return n - start >= 3 && !strncmp(url + n - 3, "/v1", 3) ? n - 3 : 0;
}

/* Every rule across keys; each broken one is reported (fail appends), none stops the others. */
static void validate(struct loader *ld, struct config *cfg, yaml_node_t *root)
{
	if (cfg->nlisten == 0)
		fail(ld, value_node(ld, root, "listen"), "listen: at least one listener is required");
	if (cfg->nupstreams == 0)
		fail(ld, value_node(ld, root, "upstreams"), "upstreams: at least one upstream is required");
	for (int i = 0; i < cfg->nlisten; i++) {
		struct cfg_listen *l = &cfg->listen[i];
		yaml_node_t *n = ld->listen_nodes[i];
		const char *why = l->address[0] ? address_problem(l->address) : NULL;
		if (!l->address[0])
			fail(ld, n, "listen[%d]: address is required", i);
		else if (why)
			fail(ld, value_node(ld, n, "address"), "listen[%d]: address \"%s\": %s", i, l->address, why);
		if ((l->tls.cert[0] != 0) != (l->tls.key[0] != 0))
			fail(ld, value_node(ld, n, "tls"), "listen[%d]: tls needs both cert and key", i);
		char *end;
		long mode = strtol(l->mode, &end, 8);
		if (*end || !l->mode[0] || mode < 0 || mode > 0777)
			fail(ld, value_node(ld, n, "mode"), "listen[%d]: mode \"%s\" is not an octal file mode", i, l->mode);
	}
	for (int i = 0; i < cfg->nupstreams; i++) {
		struct cfg_upstream *u = &cfg->upstreams[i];
		yaml_node_t *n = ld->upstream_nodes[i];
		if (strncmp(u->url, "http://", 7) && strncmp(u->url, "https://", 8)) {
			fail(ld, value_node(ld, n, "url"), "upstreams[%d]: url must start with http:// or https://", i);
		} else {
			const char *host = u->url + (u->url[4] == 's' ? 8 : 7);
			size_t keep = url_before_v1(u->url, host);
			if (!*host || *host == '/' || *host == ':')
				fail(ld, value_node(ld, n, "url"), "upstreams[%d]: url has no host", i);
			else if (keep)
				fail(ld, value_node(ld, n, "url"),
				     "upstreams[%d]: url \"%s\" ends in /v1, but carpool adds each request's /v1/... path "
				     "itself (this url would get /v1/v1/completions): write \"%.*s\"",
				     i, u->url, (int)keep, u->url);
		}
		if (u->nmodels == 0)
			fail(ld, value_node(ld, n, "models"), "upstreams[%d]: models must not be empty", i);
		if (u->health_path[0] && u->health_path[0] != '/')
			fail(ld, value_node(ld, n, "health_path"), "upstreams[%d]: health_path must start with /", i);
	}
	for (int i = 0; i < cfg->auth.nclients; i++)
		if (!cfg->auth.clients[i].key[0])
			fail(ld, value_node(ld, root, "auth"), "auth.clients[%d]: key is required", i);
	if (cfg->nupstreams > 32)
		fail(ld, root, "at most 32 upstreams");
}

static void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof *cfg);
	apply_defaults(&root_sec, cfg);
}

int config_load_string(const char *name, const char *yaml, size_t len, struct config *cfg, char *err,
		       size_t errlen)
{
	yaml_parser_t parser;
	yaml_document_t doc;
	struct loader ld = {.name = name, .doc = &doc, .err = err, .errlen = errlen};
	int rc = CP_ERROR;

	config_defaults(cfg);
	snprintf(cfg->path, sizeof cfg->path, "%s", name);
	if (!yaml_parser_initialize(&parser)) {
		snprintf(err, errlen, "%s: cannot initialise the YAML parser", name);
		return CP_ERROR;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
	if (!yaml_parser_load(&parser, &doc)) {
		snprintf(err, errlen, "%s:%zu:%zu: %s", name, parser.problem_mark.line + 1,
			 parser.problem_mark.column + 1, parser.problem ? parser.problem : "YAML syntax error");
		yaml_parser_delete(&parser);
		return CP_ERROR;
	}
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (!root)
		snprintf(err, errlen, "%s:1:1: the file is empty", name);
	else if (root->type != YAML_MAPPING_NODE)
		fail(&ld, root, "the top level must be a mapping");
	else {
		load_section(&ld, &root_sec, cfg, root, "");
		validate(&ld, cfg, root);
		rc = ld.nerr ? CP_ERROR : CP_OK;
	}
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
	return rc;
}

int config_load(const char *file, struct config *cfg, char *err, size_t errlen)
{
	FILE *f = fopen(file, "rb");
	if (!f) {
		snprintf(err, errlen, "%s: %s", file, strerror(errno));
		return CP_ERROR;
	}
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && !S_ISREG(st.st_mode)) {
		fclose(f);
		snprintf(err, errlen, "%s: %s, not a config file", file, S_ISDIR(st.st_mode) ? "a directory" : "not a regular file");
		return CP_ERROR;
	}
	struct sbuf b = {0};
	char chunk[4096];
	size_t n;
	while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
		sbuf_add(&b, chunk, n);
		if (b.len > (1u << 20)) {
			fclose(f);
			sbuf_free(&b);
			snprintf(err, errlen, "%s: larger than 1 MiB", file);
			return CP_ERROR;
		}
	}
	fclose(f);
	int rc = config_load_string(file, b.data ? b.data : "", b.len, cfg, err, errlen);
	sbuf_free(&b);
	return rc;
}

const char *dialect_name(enum dialect d)
{
	return d >= DIALECT_AUTO && d <= DIALECT_LLAMACPP ? dialect_names[d] : "?";
}
