/* simgen: the simulator's deterministic output, shared by carpool-sim and the load generator.
 *
 * THIS IS A SIMULATOR. The "tokens" are synthetic strings; nothing here is a language model.
 *
 * Specification (tests/e2e/simgen.js implements the same in JavaScript; keep them in step):
 *   key(prompt)    string prompt: its UTF-8 bytes; token-id prompt: the ids in decimal joined by ","
 *                  (e.g. [1,2,3] -> "1,2,3").
 *   seed(key, j)   fnv1a32(key) XOR (j * 0x9E3779B9), uint32 arithmetic; j is the choice (0..n-1).
 *   natural length L = MIN + seed % (MAX - MIN + 1)        (answer range MIN..MAX, default 3..16:
 *                                                          L = 3 + seed % 14; carpool-sim --answer-tokens)
 *   generated      m = min(L, max_tokens)  (max_tokens absent: 16; max_tokens 0: 1 token, like llama.cpp)
 *   finish_reason  "stop" when m == L, else "length"
 *   token i        " t<i>-<hex4>" with hex4 = 4 lower-case hex digits of ((seed*31 + i) * 2654435761) >> 16
 *   prompt_tokens  string: ceil(bytes / 4), at least 1; token ids: their count
 *   embedding k    ((fnv1a32(key) + k * 7919) % 2000) / 1000.0 - 1.0   (k = 0..dims-1, default dims 8)
 */
#ifndef CARPOOL_SIMGEN_H
#define CARPOOL_SIMGEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIMGEN_DEFAULT_MAX_TOKENS 16
#define SIMGEN_ANSWER_MIN 3 /* the default range of natural answer lengths */
#define SIMGEN_ANSWER_MAX 16
#define SIMGEN_ANSWER_LIMIT 100000 /* the longest answer a range may ask for */
#define SIMGEN_DEFAULT_DIMS 8
#define SIMGEN_TOKEN_MAX 32 /* bytes a token text needs, with its NUL */

uint32_t simgen_fnv1a(const char *key, size_t len);
uint32_t simgen_seed(const char *key, size_t len, unsigned choice);
/* Tokens generated for this seed under max_tokens (< 0: absent); *finish gets "stop" or "length". */
unsigned simgen_length(uint32_t seed, long max_tokens, const char **finish);
/* The same with natural lengths drawn from min..max (1 <= min <= max) instead of the default 3..16. */
unsigned simgen_length_in(uint32_t seed, unsigned min, unsigned max, long max_tokens, const char **finish);
/* Parses "MIN:MAX" (1 <= MIN <= MAX <= SIMGEN_ANSWER_LIMIT); false, outputs untouched, when malformed. */
bool simgen_parse_answers(const char *s, unsigned *min, unsigned *max);
/* Writes token i's text (NUL-terminated) into out[SIMGEN_TOKEN_MAX]; returns its length. */
size_t simgen_token(uint32_t seed, unsigned i, char *out);
unsigned simgen_prompt_tokens_text(size_t bytes);
double simgen_embedding(const char *key, size_t len, unsigned k);

#endif
