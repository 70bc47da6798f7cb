/*
 * fuzz_token_response.c - the token endpoint / IMDS response parser.
 *
 * The first byte picks the HTTP status the body arrives with (2xx or an error status), the
 * rest is the body. Inputs above the parser's own bound are cut, as libcurl's write callback
 * would refuse them anyway.
 */
#include <stdint.h>
#include <string.h>

#include "tokenreq.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = {200, 400, 401, 503};
	static struct tokenreq_response out;
	if (size < 1)
		return 0;
	long status = statuses[data[0] % 4];
	size_t len = size - 1 > TOKENREQ_BODY_MAX + 16 ? TOKENREQ_BODY_MAX + 16 : size - 1;
	bool ok = tokenreq_parse_response((const char *)data + 1, len, status, &out);
	/* Invariants callers rely on: a token is header-safe and bounded, the strings terminated.
	 */
	if (ok) {
		size_t n = strnlen(out.access_token, sizeof out.access_token);
		if (n == 0 || n > TOKENREQ_TOKEN_MAX || out.expires_in_s < 1 || status != 200)
			__builtin_trap();
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)out.access_token[i] <= 0x20 ||
			    (unsigned char)out.access_token[i] > 0x7e)
				__builtin_trap();
	} else if (out.access_token[0] || !memchr(out.error, 0, sizeof out.error) ||
	           !memchr(out.error_description, 0, sizeof out.error_description)) {
		__builtin_trap();
	}
	return 0;
}
