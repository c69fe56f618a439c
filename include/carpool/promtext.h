/* promtext: reads the load gauges of an LLM server out of its Prometheus text exposition (GET
 * /metrics). Pure: bytes in, figures out; no I/O. Incremental (a line may be split across reads at
 * any byte), bounded (a line longer than PROM_MAX_LINE is skipped whole), and strict about what it
 * takes: a known gauge name, optional {labels} (quoted values, escapes), one finite value >= 0.
 *
 * Gauges read, summed over their label sets (several models or engines):
 *   running: vllm:num_requests_running   sglang:num_running_reqs   llamacpp:requests_processing
 *   waiting: vllm:num_requests_waiting   sglang:num_queue_reqs     llamacpp:requests_deferred */
#ifndef CARPOOL_PROMTEXT_H
#define CARPOOL_PROMTEXT_H

#include "carpool/common.h"

#define PROM_MAX_LINE 2048

struct prom_load {
	double running, waiting;
	bool has_running, has_waiting;
};

struct prom_parser {
	struct prom_load load;
	char line[PROM_MAX_LINE + 1];
	size_t len;
	bool skipping; /* inside a line too long to keep: ignored up to its end */
	unsigned long lines, bad; /* lines seen; sample lines of a known name not understood */
};

void prom_init(struct prom_parser *p);
void prom_feed(struct prom_parser *p, const char *data, size_t len);
/* The text is complete (a last line without its newline counts). CP_OK with *out filled when it
 * held a running gauge of a known server; CP_DECLINED otherwise (nothing exported, or garbage). */
int prom_finish(struct prom_parser *p, struct prom_load *out);

#endif
