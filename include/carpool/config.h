/* config: the YAML file (libyaml) -> a typed, validated struct config.
 *
 * One declarative table of keys (name, type, field, bounds, default) drives the parser, the defaults and
 * `--check-config`; every error names FILE:LINE:COLUMN; unknown and duplicate keys are errors. */
#ifndef CARPOOL_CONFIG_H
#define CARPOOL_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#define CFG_MAX_LISTEN 16
#define CFG_MAX_UPSTREAMS 16
#define CFG_MAX_MODELS 16
#define CFG_MAX_KEYS 64
#define CFG_STR 512

enum dialect { DIALECT_AUTO, DIALECT_OPENAI, DIALECT_VLLM, DIALECT_LLAMACPP };
enum batch_policy { POLICY_ADAPTIVE, POLICY_FIXED };
enum batch_queue { QUEUE_SHARED, QUEUE_PER_WORKER };
/* What a listener answers: the API and carpool's own endpoints (/healthz, /readyz, /metrics), or one
 * of the two. */
enum listen_serve { SERVE_ALL, SERVE_API, SERVE_OPS };
/* How client writes leave: through io_uring where the kernel offers it (auto), only so (on: no start
 * without it), or one send() each (off). */
enum io_uring_mode { IO_URING_AUTO, IO_URING_ON, IO_URING_OFF };

struct cfg_tls_server {
	char cert[CFG_STR];
	char key[CFG_STR];
};

struct cfg_listen {
	char address[CFG_STR];
	char mode[8];
	long serve; /* enum listen_serve */
	struct cfg_tls_server tls;
};

struct cfg_tls_client {
	bool verify;
	char ca_file[CFG_STR];
};

struct cfg_upstream {
	char url[CFG_STR];
	long dialect; /* enum dialect */
	char api_key_env[128];
	long max_sequences; /* sequences the upstream decodes at once; 0: learned from its signals, else unbounded */
	long max_inflight;  /* hard cap on calls open at once; 0: none */
	long rate_limit_rpm;
	long weight;
	char models[CFG_MAX_MODELS][128];
	int nmodels;
	long max_inputs_per_call;
	long max_tokens_per_call;
	char health_path[256];
	long health_interval_ms;
	long load_poll_ms; /* how often the upstream's load signals are read; 0: never */
	long keepalive_ms;	/* an idle connection is kept this long for reuse (0: never reused) */
	long keepalive_conns;	/* idle connections kept at most (0: max_inflight, or MAX_IDLE without one) */
	struct cfg_tls_client tls;
};

struct cfg_client {
	char key[128];
	char name[64]; /* for the access log; "" : key#N, its place among the keys */
	long max_concurrent;
	long rate_limit_rpm;
};

struct cfg_batching {
	long policy; /* enum batch_policy */
	long max_wait_ms;
	long max_batch_size;
	long queue; /* enum batch_queue */
};

struct cfg_auth {
	char keys[CFG_MAX_KEYS][128];
	int nkeys;
	char keys_file[CFG_STR];
	struct cfg_client clients[CFG_MAX_KEYS];
	int nclients;
};

struct cfg_limits {
	long max_body_bytes;
	long max_header_bytes;
	long max_clients;
	long max_queue;
	long max_client_buffer;
};

struct cfg_timeouts {
	long connect_ms;
	long first_byte_ms;
	long idle_ms;
	long client_idle_ms;
	long client_header_ms;
	long client_body_ms;
	long drain_ms;
	long sse_keepalive_ms;
};

struct cfg_log {
	long level; /* enum log_level */
	char access[CFG_STR];
};

struct config {
	char path[CFG_STR];
	long workers; /* event loops (threads); 0: one per core */
	long io_uring; /* enum io_uring_mode */
	struct cfg_listen listen[CFG_MAX_LISTEN];
	int nlisten;
	struct cfg_upstream upstreams[CFG_MAX_UPSTREAMS];
	int nupstreams;
	struct cfg_batching batching;
	struct cfg_auth auth;
	struct cfg_limits limits;
	struct cfg_timeouts timeouts;
	struct cfg_log log;
};

/* Loads and validates FILE into *cfg (which the call fully initialises). On failure returns CP_ERROR
 * and writes "FILE:LINE:COLUMN: message" into err. Nothing to free either way. */
int config_load(const char *file, struct config *cfg, char *err, size_t errlen);

/* Same, from a string in memory (name is used in messages). For tests. */
int config_load_string(const char *name, const char *yaml, size_t len, struct config *cfg, char *err,
		       size_t errlen);

const char *dialect_name(enum dialect d);

#endif
