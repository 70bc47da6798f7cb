/* util.c - clocks, randomness, GUIDs, base64url, form decoding for graph-sim. */
#include <ctype.h>
#include <errno.h>
#include <microhttpd.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "gsim.h"

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t gs_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int64_t gs_wall_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

/* "2026-11-26T10:00:00.412Z"; cap >= 25. */
void gs_fmt_time(int64_t wall_ms, char *buf, size_t cap)
{
	time_t secs = (time_t)(wall_ms / 1000);
	struct tm tm;
	gmtime_r(&secs, &tm);
	snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
	         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(wall_ms % 1000));
}

/* RFC 3339 in UTC ("Z"), optional fraction: what OData filters carry. */
bool gs_parse_time(const char *s, int64_t *wall_ms)
{
	struct tm tm;
	memset(&tm, 0, sizeof(tm));
	const char *p = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!p)
		return false;
	int64_t ms = 0;
	if (*p == '.') {
		int digits = 0;
		for (p++; isdigit((unsigned char)*p); p++, digits++)
			if (digits < 3)
				ms = ms * 10 + (*p - '0');
		if (digits == 0)
			return false;
		for (; digits < 3; digits++)
			ms *= 10;
	}
	if (strcmp(p, "Z") != 0 && strcmp(p, "+00:00") != 0)
		return false;
	time_t t = timegm(&tm);
	if (t == (time_t)-1)
		return false;
	*wall_ms = (int64_t)t * 1000 + ms;
	return true;
}

/* xorshift128+ per thread: fault dice and request ids, not secrets. */
static __thread uint64_t rng[2];

uint64_t gs_rand_u64(void)
{
	if (rng[0] == 0 && rng[1] == 0) {
		if (getrandom(rng, sizeof(rng), 0) != sizeof(rng) || (rng[0] | rng[1]) == 0) {
			rng[0] = (uint64_t)gs_mono_ms() | 1;
			rng[1] = (uint64_t)(uintptr_t)&rng;
		}
	}
	uint64_t s1 = rng[0];
	const uint64_t s0 = rng[1];
	rng[0] = s0;
	s1 ^= s1 << 23;
	rng[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
	return rng[1] + s0;
}

double gs_rand_unit(void)
{
	return (double)(gs_rand_u64() >> 11) * (1.0 / 9007199254740992.0);
}

bool gs_roll(double rate)
{
	if (rate <= 0)
		return false;
	if (rate >= 1)
		return true;
	return gs_rand_unit() < rate;
}

static void guid_format(const unsigned char b[16], char out[GS_GUID_LEN + 1])
{
	snprintf(out, GS_GUID_LEN + 1,
	         "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1],
	         b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
	         b[15]);
}

void gs_guid_random(char out[GS_GUID_LEN + 1])
{
	uint64_t r[2] = {gs_rand_u64(), gs_rand_u64()};
	unsigned char *b = (unsigned char *)r;
	b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
	b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
	guid_format(b, out);
}

/* A stable GUID for a name (tenant domains, UPNs): what Entra would have as object id. */
void gs_guid_from_name(const char *name, char out[GS_GUID_LEN + 1])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	char *lower = gs_strdup_lower(name);
	if (!lower || !EVP_Digest(lower, strlen(lower), md, &mdlen, EVP_sha256(), NULL))
		memset(md, 0, sizeof(md));
	free(lower);
	md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
	md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
	guid_format(md, out);
}

bool gs_is_guid(const char *s)
{
	for (int i = 0; i < GS_GUID_LEN; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;
		if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
			return false;
	}
	return s[GS_GUID_LEN] == '\0';
}

/* Opaque access tokens: 32 random bytes, base64url. */
bool gs_token_random(char *out, size_t cap)
{
	unsigned char b[32];
	if (RAND_bytes(b, sizeof(b)) != 1)
		return false;
	gs_b64url_encode(b, sizeof(b), out, cap);
	return true;
}

void gs_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap)
{
	static const char tab[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;
	for (size_t i = 0; i < len && o + 5 < cap; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)in[i + 1] << 8;
		if (i + 2 < len)
			v |= in[i + 2];
		out[o++] = tab[(v >> 18) & 63];
		out[o++] = tab[(v >> 12) & 63];
		if (i + 1 < len)
			out[o++] = tab[(v >> 6) & 63];
		if (i + 2 < len)
			out[o++] = tab[v & 63];
	}
	out[o] = '\0';
}

/* base64url without padding (JWS) into out; EVP_DecodeBlock does the decoding. */
bool gs_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap, size_t *out_len)
{
	if (len % 4 == 1 || len > 8 * 1024 * 1024)
		return false;
	size_t padded = (len + 3) / 4 * 4;
	if (padded / 4 * 3 > cap)
		return false;
	char *tmp = malloc(padded + 1);
	if (!tmp)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (c == '+' || c == '/' || c == '=')
			goto fail;
		tmp[i] = c;
	}
	for (size_t i = len; i < padded; i++)
		tmp[i] = '=';
	int n = padded ? EVP_DecodeBlock(out, (unsigned char *)tmp, (int)padded) : 0;
	if (n < 0)
		goto fail;
	*out_len = (size_t)n - (padded - len);
	free(tmp);
	return true;
fail:
	free(tmp);
	return false;
}

char *gs_strdup_lower(const char *s)
{
	char *d = strdup(s);
	if (d)
		for (char *p = d; *p; p++)
			*p = (char)tolower((unsigned char)*p);
	return d;
}

void gs_strlist_free(struct gs_strlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->v[i]);
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

bool gs_strlist_has(const struct gs_strlist *l, const char *s, bool nocase)
{
	for (size_t i = 0; i < l->n; i++)
		if (nocase ? strcasecmp(l->v[i], s) == 0 : strcmp(l->v[i], s) == 0)
			return true;
	return false;
}

/* MHD_http_unescape decodes %XX; '+' means space only in forms, so it is done here. */
bool gs_form_get(const char *body, size_t len, const char *key, char *out, size_t cap)
{
	size_t klen = strlen(key);
	const char *p = body, *end = body + len;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *pe = amp ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(pe - p));
		if (eq && (size_t)(eq - p) == klen && memcmp(p, key, klen) == 0) {
			size_t vlen = (size_t)(pe - eq - 1);
			if (vlen >= cap)
				return false;
			memcpy(out, eq + 1, vlen);
			out[vlen] = '\0';
			for (char *c = out; *c; c++)
				if (*c == '+')
					*c = ' ';
			MHD_http_unescape(out);
			return true;
		}
		p = pe + 1;
	}
	return false;
}

char *gs_json_dump(json_object *o, size_t *len)
{
	size_t n = 0;
	const char *s = json_object_to_json_string_length(
	    o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
	char *d = s ? malloc(n + 1) : NULL;
	if (d) {
		memcpy(d, s, n + 1);
		*len = n;
	}
	return d;
}

bool gs_body_append(char **body, size_t *len, size_t *cap, bool *too_big, const char *data,
                    size_t n)
{
	if (*too_big || *len + n > GS_BODY_MAX) {
		*too_big = true;
		return true;
	}
	if (*len + n + 1 > *cap) {
		size_t ncap = *cap ? *cap : 1024;
		while (ncap < *len + n + 1)
			ncap *= 2;
		char *nb = realloc(*body, ncap);
		if (!nb)
			return false;
		*body = nb;
		*cap = ncap;
	}
	memcpy(*body + *len, data, n);
	*len += n;
	(*body)[*len] = '\0';
	return true;
}
