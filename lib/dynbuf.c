/*
 * dynbuf.c - the bounded text buffer (see dynbuf.h).
 */
#include "dynbuf.h"

#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_CAP 1024

void dynbuf_init(struct dynbuf *b, size_t limit)
{
	*b = (struct dynbuf){.limit = limit};
}

void dynbuf_init_secret(struct dynbuf *b, size_t limit)
{
	*b = (struct dynbuf){.limit = limit, .secret = true};
}

void dynbuf_init_fixed(struct dynbuf *b, char *out, size_t cap)
{
	*b = (struct dynbuf){.p = out, .cap = cap, .limit = cap ? cap - 1 : 0, .fixed = true};
	if (cap)
		out[0] = '\0';
	else
		b->too_big = true;
}

/* A block of at least need bytes (text and NUL), at most limit + 1. */
static bool grow(struct dynbuf *b, size_t need)
{
	size_t cap = b->cap ? b->cap : FIRST_CAP;
	while (cap < need)
		cap *= 2;
	if (cap - 1 > b->limit)
		cap = b->limit + 1;
	char *p;
	if (b->secret) {
		/* realloc may move the text and leave the old block as it was: copy and wipe. */
		p = malloc(cap);
		if (p && b->p) {
			memcpy(p, b->p, b->len + 1);
			OPENSSL_cleanse(b->p, b->cap);
			free(b->p);
		}
	} else {
		p = realloc(b->p, cap);
	}
	if (!p)
		return false;
	b->p = p;
	b->cap = cap;
	return true;
}

bool dynbuf_add(struct dynbuf *b, const void *s, size_t n)
{
	if (!dynbuf_ok(b))
		return false;
	if (n > b->limit - b->len) {
		b->too_big = true;
		return false;
	}
	if (b->len + n + 1 > b->cap && (b->fixed || !grow(b, b->len + n + 1))) {
		b->no_mem = true;
		return false;
	}
	if (n) /* s may be NULL then, which memcpy must not get */
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
	return true;
}

bool dynbuf_adds(struct dynbuf *b, const char *s)
{
	return dynbuf_add(b, s, strlen(s));
}

bool dynbuf_addf(struct dynbuf *b, const char *fmt, ...)
{
	char small[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof small, fmt, ap);
	va_end(ap);
	if (n < 0) {
		b->no_mem = true;
		return false;
	}
	if ((size_t)n < sizeof small)
		return dynbuf_add(b, small, (size_t)n);
	char *big = malloc((size_t)n + 1);
	if (!big) {
		b->no_mem = true;
		return false;
	}
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	bool ok = dynbuf_add(b, big, (size_t)n);
	if (b->secret)
		OPENSSL_cleanse(big, (size_t)n + 1);
	free(big);
	return ok;
}

bool dynbuf_ok(const struct dynbuf *b)
{
	return !b->too_big && !b->no_mem;
}

bool dynbuf_too_big(const struct dynbuf *b)
{
	return b->too_big;
}

const char *dynbuf_str(const struct dynbuf *b)
{
	return b->p && b->cap ? b->p : "";
}

size_t dynbuf_len(const struct dynbuf *b)
{
	return b->len;
}

void dynbuf_truncate(struct dynbuf *b, size_t len)
{
	if (len >= b->len)
		return;
	if (b->secret)
		OPENSSL_cleanse(b->p + len, b->len - len);
	b->len = len;
	b->p[len] = '\0';
}

void dynbuf_reset(struct dynbuf *b)
{
	if (b->p && b->secret)
		OPENSSL_cleanse(b->p, b->cap);
	if (b->p && b->cap)
		b->p[0] = '\0';
	b->len = 0;
	b->too_big = b->no_mem = false;
	if (b->fixed && !b->cap)
		b->too_big = true;
}

char *dynbuf_take(struct dynbuf *b, size_t *len)
{
	if (b->fixed || !dynbuf_ok(b))
		return NULL;
	if (!b->p && !grow(b, 1))
		return NULL;
	if (!b->len)
		b->p[0] = '\0';
	char *p = b->p;
	*len = b->len;
	*b = (struct dynbuf){.limit = b->limit, .secret = b->secret};
	return p;
}

static void release(struct dynbuf *b, bool wipe)
{
	if (b->p && wipe)
		OPENSSL_cleanse(b->p, b->cap);
	if (b->fixed) {
		dynbuf_reset(b);
		return;
	}
	free(b->p);
	*b = (struct dynbuf){.limit = b->limit, .secret = b->secret};
}

void dynbuf_free(struct dynbuf *b)
{
	release(b, b->secret);
}

void dynbuf_wipe(struct dynbuf *b)
{
	release(b, true);
}
