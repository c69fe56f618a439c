/* preflight: what starting would find wrong with a valid config, found without starting — the files
 * it names (TLS certificates and keys that match, CA files, the access log's directory, a unix
 * socket's directory) and the environment (api_key_env). `--check-config` runs it, as `nginx -t`
 * does, and so does a start, so that both report the same problems, all of them at once. */
#ifndef CARPOOL_PREFLIGHT_H
#define CARPOOL_PREFLIGHT_H

#include <stddef.h>

struct config;

/* Writes one line per problem into err (NUL-terminated; lines past errlen are dropped) and returns
 * how many problems there were (0: none). Opens no socket and creates no file. */
int preflight(const struct config *cfg, char *err, size_t errlen);

#endif
