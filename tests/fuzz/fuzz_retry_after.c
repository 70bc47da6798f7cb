/*
 * fuzz_retry_after.c - Retry-After parsing. Property: an accepted value gives a delay in
 * [0, GRAPHRESP_MAX_RETRY_AFTER_MS].
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphresp.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > FUZZ_MAX_INPUT)
		return 0;
	char *v = malloc(size + 1);
	if (!v)
		abort();
	memcpy(v, data, size);
	v[size] = '\0';
	static const int64_t nows[] = {0, 1795687200412LL, INT64_MAX / 2};
	for (size_t i = 0; i < sizeof nows / sizeof nows[0]; i++) {
		int64_t d = -1;
		if (graphresp_parse_retry_after(v, nows[i], &d) &&
		    (d < 0 || d > GRAPHRESP_MAX_RETRY_AFTER_MS))
			abort();
	}
	free(v);
	return 0;
}
