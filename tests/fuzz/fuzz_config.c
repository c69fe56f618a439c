/* Fuzz target: any YAML text either loads or fails with a FILE:LINE:COLUMN message. */
#include "carpool/config.h"
#include "carpool/common.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config cfg;
	char err[1024];
	if (config_load_string("fuzz.yaml", (const char *)data, size, &cfg, err, sizeof err) != CP_OK &&
	    strncmp(err, "fuzz.yaml:", 10))
		abort();
	return 0;
}
