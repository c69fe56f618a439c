/* proxy: requests carpool forwards without batching. */
#ifndef CARPOOL_PROXY_H
#define CARPOOL_PROXY_H

struct creq;
struct upstream;

/* Passes r through to up as it came (hop-by-hop headers dropped; X-Request-Id, X-Forwarded-For and
 * X-Forwarded-Proto set) and relays the answer to r's sink as it arrives; a call that cannot start
 * is answered 502 at once. auth: the client's Authorization, sent when up has no credential of its
 * own, or NULL (client keys are carpool's, never forwarded). */
void proxy_pass(struct creq *r, struct upstream *up, const char *auth);

/* GET /v1/models of each of ups[0..nups), answered with the union of their lists (one entry per model
 * id: the first answer's); an upstream that fails adds nothing. auth: as for proxy_pass. */
void proxy_models(struct creq *r, struct upstream *ups, int nups, const char *auth);

#endif
