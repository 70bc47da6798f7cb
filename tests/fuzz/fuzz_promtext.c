/*
 * fuzz_promtext.c - the Prometheus text reader `chatprovctl status` runs on whatever answers
 * at the metrics address. Properties: no crash or leak; every accepted sample has a
 * non-empty name and its labels read back; a sum over a name is found iff a sample has it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "promtext.h"

#define FUZZ_MAX_INPUT (256 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	struct promtext *pt = NULL;
	if (size > FUZZ_MAX_INPUT)
		return 0;
	if (!promtext_parse((const char *)data, size, &pt, err, sizeof err))
		return 0;
	for (size_t i = 0; i < promtext_count(pt); i++) {
		const char *name = promtext_name(pt, i);
		double sum;
		if (!name || !name[0] || !promtext_sum(pt, name, NULL, NULL, &sum))
			abort();
		const char *tenant = promtext_label(pt, i, "tenant");
		if (tenant && !promtext_sum(pt, name, "tenant", tenant, &sum))
			abort();
	}
	promtext_free(pt);
	return 0;
}
