/*
 * fuzz_location.c - resolving a 202's Location. Property (abort on violation): an accepted
 * Location gives a URL that starts with the version root followed by '/' (never a second
 * '/'), fits, and holds no whitespace, control bytes or backslash, nor ".." in its path
 * (a query may hold one: an @odata.nextLink keeps the topic it filters on).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphreq.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(const char *root, const char *loc)
{
	char out[GRAPHREQ_URL_MAX + 64];
	if (!graphreq_resolve_location(root, loc, out, sizeof out))
		return;
	size_t rl = strlen(root);
	size_t path_len = strcspn(out, "?");
	if (strncmp(out, root, rl) != 0 || out[rl] != '/' || out[rl + 1] == '/' ||
	    strlen(out) > GRAPHREQ_URL_MAX)
		abort();
	for (size_t i = 0; i + 1 < path_len; i++)
		if (out[i] == '.' && out[i + 1] == '.')
			abort();
	for (const char *p = out; *p; p++) {
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f || *p == '\\')
			abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > FUZZ_MAX_INPUT)
		return 0;
	char *loc = malloc(size + 1);
	if (!loc)
		abort();
	memcpy(loc, data, size);
	loc[size] = '\0';
	check("https://graph.microsoft.com/v1.0", loc);
	check("http://127.0.0.1:8080/beta", loc);
	free(loc);
	return 0;
}
