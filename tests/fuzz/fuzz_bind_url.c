/*
 * fuzz_bind_url.c - the bind URL builder. Property (abort on violation): whatever the user
 * id, the URL is exactly root + "/users('" + X + "')", X holds only [A-Za-z0-9-._~@'] and
 * %XX, every ' in X comes in a pair, and decoding X gives the user id back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphreq.h"
#include "odata_literal.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char root[] = "https://graph.microsoft.com/v1.0";
	if (size > FUZZ_MAX_INPUT)
		return 0;
	char *id = malloc(size + 1), *url = malloc(3 * size + 64), *dec = malloc(size + 1);
	if (!id || !url || !dec)
		abort();
	memcpy(id, data, size);
	id[size] = '\0'; /* a C string: the id is what comes before any NUL */
	size_t cap = 3 * size + 64, rl = strlen(root);
	if (graphreq_user_bind_url(root, id, url, cap)) {
		const char *end;
		if (strncmp(url, root, rl) != 0 || strncmp(url + rl, "/users('", 8) != 0)
			abort();
		if (!odata_take(url + rl + 8, dec, &end) || strcmp(end, "')") != 0 ||
		    strcmp(dec, id) != 0)
			abort();
	} else if (id[0] != '\0') {
		abort(); /* 3 bytes per input byte always fit */
	}
	free(id);
	free(url);
	free(dec);
	return 0;
}
