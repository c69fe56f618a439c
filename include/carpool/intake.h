/* intake: OpenAI request parsing and validation, and the canonical batch key. Pure; no I/O. */
#ifndef CARPOOL_INTAKE_H
#define CARPOOL_INTAKE_H

#include "carpool/common.h"

#include <cjson/cJSON.h>

enum prompt_kind { PROMPT_TEXT, PROMPT_TOKENS };

/* A validated /v1/completions request. */
struct intake_req {
	cJSON *body;	      /* the whole request, owned */
	cJSON *prompts;	      /* array: one element per prompt (string or array of ints), owned */
	unsigned nprompts;
	unsigned n;	      /* completions per prompt */
	bool stream;
	bool include_usage;   /* stream_options.include_usage */
	enum prompt_kind kind;
	char *key;	      /* canonical form of every field but prompt/stream/stream_options, owned */
	size_t prompt_bytes;  /* total bytes of text prompts (usage estimates) */
};

/* Why a request was refused: HTTP status and the fields of the OpenAI error object. */
struct intake_error {
	int status;
	char message[256];
	const char *type;
	const char *param;
	const char *code;
};

/* Parses and validates a /v1/completions body. On CP_OK *out owns everything (intake_free);
 * on CP_ERROR *err says why and nothing is left to free. */
int intake_parse_completion(const char *body, size_t len, struct intake_req *out, struct intake_error *err);
/* The same for a /v1/embeddings body: `input` takes the place of `prompt`. */
int intake_parse_embedding(const char *body, size_t len, struct intake_req *out, struct intake_error *err);
void intake_free(struct intake_req *r);

/* Canonical JSON text of v: object keys sorted, no whitespace, numbers in one form. Caller frees. */
char *intake_canonical(const cJSON *v);

#endif
