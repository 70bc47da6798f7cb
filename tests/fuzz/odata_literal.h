/*
 * odata_literal.h - the checker the URL fuzz targets share: reads an OData string literal's
 * body as graphreq writes it (only A-Z a-z 0-9 - . _ ~ @, %XX and doubled quotes) and decodes
 * it. Header-only on purpose: each fuzz target is one translation unit.
 */
#ifndef CHATPROV_FUZZ_ODATA_LITERAL_H
#define CHATPROV_FUZZ_ODATA_LITERAL_H

#include <stdbool.h>
#include <string.h>

static int odata_unhex(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decodes the literal body starting at s into out (room for strlen(s) + 1) up to the first
 * unpaired quote, where *end is left. false on any byte outside the allowed set, a broken
 * %XX, or no closing quote.
 */
static bool odata_take(const char *s, char *out, const char **end)
{
	size_t o = 0;
	for (size_t i = 0; s[i]; i++) {
		char c = s[i];
		if (c == '\'') {
			if (s[i + 1] != '\'') {
				out[o] = '\0';
				*end = s + i;
				return true;
			}
			out[o++] = '\'';
			i++;
		} else if (c == '%') {
			if (odata_unhex(s[i + 1]) < 0 || odata_unhex(s[i + 2]) < 0)
				return false;
			out[o++] = (char)(odata_unhex(s[i + 1]) * 16 + odata_unhex(s[i + 2]));
			i += 2;
		} else if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		           (c >= '0' && c <= '9') || strchr("-._~@", c)) {
			out[o++] = c;
		} else {
			return false;
		}
	}
	return false;
}

#endif
