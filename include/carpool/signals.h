/* signals: the upstream's own load, read where the server exports it - vLLM and SGLang GET /metrics
 * (running and waiting requests), llama.cpp GET /props (total_slots) then GET /metrics, or GET /slots
 * when its metrics are off - every load_poll_ms, into the upstream's learned_cap and sig_* figures.
 * Between polls carpool's own accounting (upstream.seqs) carries the figure forward; when the server
 * exports nothing or stops answering, that accounting stands alone, and the log says so once (and
 * again when the signals come back). One poll at a time, each bounded in size and time; a poll never
 * takes a call slot or budget, and nothing waits for it. */
#ifndef CARPOOL_SIGNALS_H
#define CARPOOL_SIGNALS_H

struct upstream;

/* Starts polling up (when its load_poll_ms is not 0 and its dialect exports load). */
void signals_start(struct upstream *up);
/* Stops polling and frees the poller; before upstream_free. */
void signals_stop(struct upstream *up);

#endif
