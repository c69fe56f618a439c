/* simgen: deterministic synthetic output of the simulator. See simgen.h for the specification. */
#include "simgen.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

uint32_t simgen_fnv1a(const char *key, size_t len)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++) {
		h ^= (unsigned char)key[i];
		h *= 16777619u;
	}
	return h;
}

uint32_t simgen_seed(const char *key, size_t len, unsigned choice)
{
	return simgen_fnv1a(key, len) ^ (uint32_t)(choice * 0x9E3779B9u);
}

unsigned simgen_length(uint32_t seed, long max_tokens, const char **finish)
{
	return simgen_length_in(seed, SIMGEN_ANSWER_MIN, SIMGEN_ANSWER_MAX, max_tokens, finish);
}

unsigned simgen_length_in(uint32_t seed, unsigned min, unsigned max, long max_tokens, const char **finish)
{
	unsigned natural = min + seed % (max - min + 1);
	unsigned cap = max_tokens < 0 ? SIMGEN_DEFAULT_MAX_TOKENS : max_tokens == 0 ? 1 : (unsigned)max_tokens;
	if (cap < natural) {
		if (finish)
			*finish = "length";
		return cap;
	}
	if (finish)
		*finish = "stop";
	return natural;
}

bool simgen_parse_answers(const char *s, unsigned *min, unsigned *max)
{
	char *end;
	errno = 0;
	unsigned long lo = strtoul(s, &end, 10);
	if (errno || end == s || *end != ':' || !isdigit((unsigned char)*s))
		return false;
	const char *h = end + 1;
	unsigned long hi = strtoul(h, &end, 10);
	if (errno || end == h || *end || !isdigit((unsigned char)*h) || lo < 1 || lo > hi || hi > SIMGEN_ANSWER_LIMIT)
		return false;
	*min = (unsigned)lo;
	*max = (unsigned)hi;
	return true;
}

size_t simgen_token(uint32_t seed, unsigned i, char *out)
{
	uint32_t v = (uint32_t)((seed * 31u + i) * 2654435761u) >> 16;
	int n = snprintf(out, SIMGEN_TOKEN_MAX, " t%u-%04x", i, (unsigned)v);
	return n < 0 ? 0 : (size_t)n;
}

unsigned simgen_prompt_tokens_text(size_t bytes)
{
	return bytes == 0 ? 1 : (unsigned)((bytes + 3) / 4);
}

double simgen_embedding(const char *key, size_t len, unsigned k)
{
	uint32_t h = simgen_fnv1a(key, len);
	return (double)((h + k * 7919u) % 2000u) / 1000.0 - 1.0;
}
