/* Fuzz target: the Prometheus text reader gives the same figures however the bytes are split
 * across reads, and never a negative or non-finite one. */
#include "carpool/promtext.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	unsigned step = 1 + data[0] % 23; /* how the second pass splits the input */
	const char *in = (const char *)data + 1;
	size_t len = size - 1;
	struct prom_parser a, b;
	struct prom_load la, lb;
	memset(&la, 0, sizeof la);
	memset(&lb, 0, sizeof lb);
	prom_init(&a);
	prom_init(&b);
	prom_feed(&a, in, len);
	for (size_t i = 0; i < len; i += step)
		prom_feed(&b, in + i, len - i < step ? len - i : step);
	int ra = prom_finish(&a, &la), rb = prom_finish(&b, &lb);
	if (ra != rb || a.bad != b.bad || a.lines != b.lines)
		abort();
	if (ra == CP_OK && (la.running != lb.running || la.waiting != lb.waiting || !isfinite(la.running) ||
			    la.running < 0 || la.waiting < 0 || !la.has_running))
		abort();
	return 0;
}
