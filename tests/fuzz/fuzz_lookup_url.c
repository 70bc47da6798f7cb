/*
 * fuzz_lookup_url.c - the crash-recovery lookup URL. The input is "owner\0topic" (an event's
 * first member and topic). Property (abort on violation): whatever they hold, the URL is
 * exactly root + "/users('" + X + "')/chats?$filter=topic%20eq%20'" + Y + "'&$expand=members",
 * X and Y are escaped literals (odata_literal.h) and decode back to the owner and the topic.
 * So no event can add a path segment, a query parameter or a fragment to the lookup. The
 * owner also goes through the member id URL: root + "/users('" + X + "')?$select=id".
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "graphreq.h"
#include "odata_literal.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *skip(const char *p, const char *expect)
{
	size_t n = strlen(expect);
	if (strncmp(p, expect, n) != 0)
		abort();
	return p + n;
}

static void check(const char *root, const char *owner, const char *topic, const char *url)
{
	size_t n = strlen(url) + 1;
	char *dec = malloc(n);
	const char *end;
	if (!dec)
		abort();
	const char *p = skip(skip(url, root), "/users('");
	if (!odata_take(p, dec, &end) || strcmp(dec, owner) != 0)
		abort();
	p = skip(end, "')/chats?$filter=topic%20eq%20'");
	if (!odata_take(p, dec, &end) || strcmp(dec, topic) != 0)
		abort();
	if (strcmp(end, "'&$expand=members") != 0)
		abort();
	free(dec);
}

/* GET /users('{owner}')?$select=id names the owner and nothing else. */
static void check_user_id_url(const char *root, const char *owner, char *url, size_t cap)
{
	const char *end;
	if (!graphreq_user_id_url(root, owner, url, cap)) {
		if (owner[0] != '\0')
			abort();
		return;
	}
	char *dec = malloc(strlen(url) + 1);
	if (!dec)
		abort();
	const char *p = skip(skip(url, root), "/users('");
	if (!odata_take(p, dec, &end) || strcmp(dec, owner) != 0 ||
	    strcmp(end, "')?$select=id") != 0)
		abort();
	free(dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char root[] = "https://graph.microsoft.com/v1.0";
	if (size > FUZZ_MAX_INPUT)
		return 0;
	char *in = malloc(size + 2), *url = malloc(3 * size + 128);
	if (!in || !url)
		abort();
	memcpy(in, data, size);
	in[size] = in[size + 1] = '\0';
	const char *owner = in, *topic = in + strlen(in) + 1;
	size_t cap = 3 * size + 128;
	if (graphreq_lookup_url(root, owner, topic, url, cap))
		check(root, owner, topic, url);
	else if (owner[0] != '\0')
		abort(); /* 3 bytes per input byte always fit */
	check_user_id_url(root, owner, url, cap);
	free(in);
	free(url);
	return 0;
}
