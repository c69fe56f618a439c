/* jscan: byte-level JSON scanning. */
#include "carpool/jscan.h"

#include <string.h>

#define MAX_DEPTH 64

const char *jscan_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Byte classes for the container scan: 0 ordinary, else the byte itself matters. */
static const unsigned char cls[256] = {['"'] = '"', ['{'] = '{', ['['] = '[', ['}'] = '}', [']'] = ']'};

/* The bytes of numbers and of true, false, null (and other words, which the callers' checks or the
 * full parse then refuse). */
static const unsigned char lit[256] = {
	['+'] = 1, ['-'] = 1, ['.'] = 1, ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,
	['7'] = 1, ['8'] = 1, ['9'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1,
	['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1,
	['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1, ['A'] = 1,
	['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1,
	['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,
	['V'] = 1, ['W'] = 1, ['X'] = 1, ['Y'] = 1, ['Z'] = 1,
};

static const char *string_end(const char *p, const char *end)
{
	/* p at the opening quote: find the next quote not escaped by an odd run of backslashes */
	for (const char *q = p + 1; q < end;) {
		const char *quote = memchr(q, '"', (size_t)(end - q));
		if (!quote)
			return NULL;
		size_t bs = 0;
		for (const char *b = quote - 1; b > p && *b == '\\'; b--)
			bs++;
		if (!(bs & 1))
			return quote + 1;
		q = quote + 1;
	}
	return NULL;
}

const char *jscan_value_end(const char *p, const char *end)
{
	if (p >= end)
		return NULL;
	char c = *p;
	if (c == '"')
		return string_end(p, end);
	if (c == '{' || c == '[') {
		/* nested containers: track depth, skipping strings */
		char stack[MAX_DEPTH];
		int depth = 0;
		for (; p < end; p++) {
			c = (char)cls[(unsigned char)*p];
			if (!c)
				continue;
			if (c == '"') {
				p = string_end(p, end);
				if (!p)
					return NULL;
				p--;
			} else if (c == '{' || c == '[') {
				if (depth == MAX_DEPTH)
					return NULL;
				stack[depth++] = c == '{' ? '}' : ']';
			} else if (c == '}' || c == ']') {
				if (!depth || stack[depth - 1] != c)
					return NULL;
				if (--depth == 0)
					return p + 1;
			}
		}
		return NULL;
	}
	/* number or literal: the bytes they are made of. Nothing else (a quote, a bracket) may pass for
	 * one, so that a container's walk above and a member scan see the same strings. */
	const char *q = p;
	while (q < end && lit[(unsigned char)*q])
		q++;
	return q > p ? q : NULL;
}

bool jscan_member(const char *obj, const char *end, const char *key, const char **kstart, const char **vstart,
		  const char **vend)
{
	struct jscan_hit hit;
	if (!jscan_members(obj, end, &key, 1, &hit) || !hit.vstart)
		return false;
	*kstart = hit.kstart;
	*vstart = hit.vstart;
	*vend = hit.vend;
	return true;
}

bool jscan_uint(const char *v, const char *vend, unsigned long *out)
{
	if (v >= vend || vend - v > 15)
		return false;
	unsigned long n = 0;
	for (const char *p = v; p < vend; p++) {
		if (*p < '0' || *p > '9')
			return false;
		n = n * 10 + (unsigned long)(*p - '0');
	}
	*out = n;
	return true;
}

/* The members of an object from p, at a key (its opening quote): fills hits, returns just after the
 * object's '}'. */
static const char *scan_members(const char *p, const char *end, const char *const *keys, const size_t *klen,
				int nkeys, struct jscan_hit *hits)
{
	while (p < end) {
		if (*p != '"')
			return NULL;
		const char *ks = p;
		const char *ke = string_end(p, end);
		if (!ke)
			return NULL;
		p = jscan_ws(ke, end);
		if (p >= end || *p != ':')
			return NULL;
		const char *vs = jscan_ws(p + 1, end);
		const char *ve = jscan_value_end(vs, end);
		if (!ve)
			return NULL;
		size_t kl = (size_t)(ke - ks) - 2;
		for (int i = 0; i < nkeys; i++)
			if (!hits[i].vstart && klen[i] == kl && !memcmp(ks + 1, keys[i], kl)) {
				hits[i].kstart = ks;
				hits[i].vstart = vs;
				hits[i].vend = ve;
			}
		p = jscan_ws(ve, end);
		if (p < end && *p == ',') {
			p = jscan_ws(p + 1, end);
			continue;
		}
		return p < end && *p == '}' ? p + 1 : NULL;
	}
	return NULL;
}

static bool keys_init(const char *const *keys, int nkeys, struct jscan_hit *hits, size_t *klen)
{
	if (nkeys > JSCAN_MAX_KEYS)
		return false;
	for (int i = 0; i < nkeys; i++) {
		hits[i].kstart = hits[i].vstart = hits[i].vend = NULL;
		klen[i] = strlen(keys[i]);
	}
	return true;
}

const char *jscan_members(const char *obj, const char *end, const char *const *keys, int nkeys,
			  struct jscan_hit *hits)
{
	size_t klen[JSCAN_MAX_KEYS];
	if (!keys_init(keys, nkeys, hits, klen))
		return NULL;
	const char *p = jscan_ws(obj, end);
	if (p >= end || *p != '{')
		return NULL;
	p = jscan_ws(p + 1, end);
	if (p < end && *p == '}')
		return p + 1;
	return scan_members(p, end, keys, klen, nkeys, hits);
}

const char *jscan_members_from(const char *p, const char *end, const char *const *keys, int nkeys,
			       struct jscan_hit *hits)
{
	size_t klen[JSCAN_MAX_KEYS];
	if (!keys_init(keys, nkeys, hits, klen))
		return NULL;
	p = jscan_ws(p, end);
	if (p < end && *p == '}')
		return p + 1;
	if (p >= end || *p != ',')
		return NULL;
	return scan_members(jscan_ws(p + 1, end), end, keys, klen, nkeys, hits);
}
