/* reqbody: the upstream body of a batched completion call, written as bytes. Every member of a
 * batch has the same batch key, whose canonical JSON holds every field of the request but the
 * prompt and the delivery fields (intake.h); the body is that object with the members' prompts
 * spliced in as one prompt array, and the delivery fields carpool needs upstream. Pure. */
#ifndef CARPOOL_REQBODY_H
#define CARPOOL_REQBODY_H

#include "carpool/config.h"
#include "carpool/intake.h"

/* The body for reqs[0..n) (one batch: the same key), prompts in member order, "stream": true, and
 * stream_options {include_usage (and continuous_usage_stats for vLLM)} except for llama.cpp.
 * Caller frees. */
char *reqbody_completion(const struct intake_req *const *reqs, unsigned n, enum dialect d);

/* The same body built as a JSON tree from the first request's parsed body (the fallback for a key
 * the splice cannot use, and what the tests compare reqbody_completion with). Caller frees. */
char *reqbody_completion_json(const struct intake_req *const *reqs, unsigned n, enum dialect d);

#endif
