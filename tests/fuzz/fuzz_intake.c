/* Fuzz target: request validation never crashes or leaks, and an accepted request is consistent. */
#include "carpool/intake.h"

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct intake_req r;
	struct intake_error err;
	for (int embed = 0; embed < 2; embed++) {
		int rc = embed ? intake_parse_embedding((const char *)data, size, &r, &err)
			       : intake_parse_completion((const char *)data, size, &r, &err);
		if (rc == CP_OK) {
			if (!r.key || !r.nprompts || cJSON_GetArraySize(r.prompts) != (int)r.nprompts)
				abort();
			intake_free(&r);
		} else if (err.status < 400 || err.status > 499) {
			abort();
		}
	}
	return 0;
}
