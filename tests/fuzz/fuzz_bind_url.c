/*
 * fuzz_bind_url.c - the bind URL builder. Property (abort on violation): whatever the user
 * id, the URL is exactly root + "/users('" + X + "')", X holds only [A-Za-z0-9-._~@'] and
 * %XX, every ' in X comes in a pair, and decoding X gives the user id back.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphreq.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes X (between "users('" and "')") into out; false on any violation. */
static bool decode_literal(const char *x, size_t n, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < n; i++) {
		char c = x[i];
		if (c == '\'') {
			if (i + 1 >= n || x[i + 1] != '\'')
				return false;
			out[o++] = '\'';
			i++;
		} else if (c == '%') {
			if (i + 2 >= n || unhex(x[i + 1]) < 0 || unhex(x[i + 2]) < 0)
				return false;
			out[o++] = (char)(unhex(x[i + 1]) * 16 + unhex(x[i + 2]));
			i += 2;
		} else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		           (c >= '0' && c <= '9') || strchr("-._~@", c)) {
			out[o++] = c;
		} else {
			return false;
		}
	}
	out[o] = '\0';
	return true;
}

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
		size_t ul = strlen(url);
		if (ul < rl + 10 || memcmp(url, root, rl) != 0 ||
		    memcmp(url + rl, "/users('", 8) != 0 || memcmp(url + ul - 2, "')", 2) != 0)
			abort();
		if (!decode_literal(url + rl + 8, ul - rl - 10, dec) || strcmp(dec, id) != 0)
			abort();
	} else if (id[0] != '\0') {
		abort(); /* 3 bytes per input byte always fit */
	}
	free(id);
	free(url);
	free(dec);
	return 0;
}
