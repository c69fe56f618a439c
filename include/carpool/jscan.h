/* jscan: byte-level scanning of JSON text, for the splitter's fast path: find a member's value in
 * an object without building a tree, so that a single-choice event's `index` can be rewritten in
 * place. Pure. Every function returns NULL / false on text it does not understand; callers then
 * fall back to a full parse. */
#ifndef CARPOOL_JSCAN_H
#define CARPOOL_JSCAN_H

#include <stdbool.h>
#include <stddef.h>

const char *jscan_ws(const char *p, const char *end);
/* The end of the JSON value starting at p (after whitespace is skipped by the caller). */
const char *jscan_value_end(const char *p, const char *end);
/* In the object starting at obj ('{'), the top-level member named key (no escapes in key):
 * *kstart at its opening quote, [*vstart, *vend) its value. */
bool jscan_member(const char *obj, const char *end, const char *key, const char **kstart, const char **vstart,
		  const char **vend);
struct jscan_hit {
	const char *kstart, *vstart, *vend; /* vstart NULL: absent */
};
#define JSCAN_MAX_KEYS 8
/* One pass over the object at obj: fills hits[i] for keys[i] (the first of duplicates; at most
 * JSCAN_MAX_KEYS keys). Returns the end of the object (just after its '}'), or NULL if it is not well
 * formed. */
const char *jscan_members(const char *obj, const char *end, const char *const *keys, int nkeys,
			  struct jscan_hit *hits);

/* The same for the rest of an object: p is just after one of its members' values (at the ',' or '}'
 * that follows, blanks allowed). */
const char *jscan_members_from(const char *p, const char *end, const char *const *keys, int nkeys,
			       struct jscan_hit *hits);

/* A non-negative integer value in [v, vend); false if it is not plain digits (or too large). */
bool jscan_uint(const char *v, const char *vend, unsigned long *out);

#endif
