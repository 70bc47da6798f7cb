/* redrive.c - DLQ record filters and the headers of a re-driven copy. */
#include "redrive.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "jsondoc.h"
#include "kafka.h"
#include "staterec.h"

#define DLQ_PREFIX "chatprov-"
#define JSON_DEPTH 32 /* the event decoder's nesting limit */

static bool record_status(const rd_kafka_headers_t *h, char *out, size_t cap)
{
	if (kafka_header_text(h, STATE_STATUS_HEADER, out, cap))
		return true;
	if (!kafka_header_has(h, "chatprov-reject-reason"))
		return false;
	snprintf(out, cap, "rejected");
	return true;
}

static bool record_code(const rd_kafka_headers_t *h, const char *status, char *out, size_t cap)
{
	if (kafka_header_text(h, "chatprov-error-code", out, cap))
		return true;
	if (strcmp(status, "rejected") != 0)
		return false;
	snprintf(out, cap, "InvalidRequest");
	return true;
}

/* Whether the event's "tenant" ("default" when absent or null) is want, byte for byte. */
static bool tenant_is(const void *value, size_t len, const char *want)
{
	struct jsondoc_error jerr;
	if (!value || len == 0 || len > (size_t)INT32_MAX || memchr(value, '\0', len))
		return false;
	json_object *root = jsondoc_parse(value, len, JSON_DEPTH, &jerr), *t = NULL;
	bool is = false;
	if (!root || !json_object_is_type(root, json_type_object))
		goto out;
	if (!json_object_object_get_ex(root, "tenant", &t) || !t)
		is = strcmp(want, "default") == 0;
	else if (json_object_is_type(t, json_type_string))
		is = (size_t)json_object_get_string_len(t) == strlen(want) &&
		     memcmp(json_object_get_string(t), want, strlen(want)) == 0;
out:
	json_object_put(root);
	return is;
}

bool redrive_match(const struct redrive_filter *f, const rd_kafka_headers_t *headers,
                   const void *value, size_t len, int64_t timestamp_ms)
{
	char status[32], code[256];
	if (!record_status(headers, status, sizeof status) || strcmp(status, f->status) != 0)
		return false;
	if (f->code && (!record_code(headers, status, code, sizeof code) ||
	                strcmp(code, f->code) != 0))
		return false;
	if (f->since_ms != INT64_MIN && (timestamp_ms < 0 || timestamp_ms < f->since_ms))
		return false;
	return !f->tenant || tenant_is(value, len, f->tenant[0] ? f->tenant : "default");
}

bool redrive_truncated(const rd_kafka_headers_t *headers)
{
	return kafka_header_has(headers, "chatprov-dlq-truncated");
}

rd_kafka_headers_t *redrive_headers(const rd_kafka_headers_t *headers)
{
	size_t n = headers ? rd_kafka_header_cnt(headers) : 0;
	rd_kafka_headers_t *out = rd_kafka_headers_new(n ? n : 1);
	const char *name;
	const void *v;
	size_t len;
	for (size_t i = 0; out && i < n; i++) {
		if (rd_kafka_header_get_all(headers, i, &name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR)
			break;
		if (strncasecmp(name, DLQ_PREFIX, strlen(DLQ_PREFIX)) == 0)
			continue;
		if (rd_kafka_header_add(out, name, -1, v, v ? (ssize_t)len : -1) != 0) {
			rd_kafka_headers_destroy(out);
			return NULL;
		}
	}
	return out;
}

/* [.fraction] then Z or ±HH:MM; *offset_s east of UTC. */
static bool parse_zone(const char *p, int64_t *frac_ms, int *offset_s)
{
	*frac_ms = 0;
	if (*p == '.') {
		int64_t scale = 100;
		if (!isdigit((unsigned char)*++p))
			return false;
		for (; isdigit((unsigned char)*p); p++, scale /= 10)
			*frac_ms += (*p - '0') * scale;
	}
	if ((*p == 'Z' || *p == 'z') && p[1] == '\0') {
		*offset_s = 0;
		return true;
	}
	/* ±HH:MM, exactly */
	const char *d = p + 1;
	if ((*p != '+' && *p != '-') || strlen(d) != 5 || d[2] != ':')
		return false;
	for (int i = 0; i < 5; i++)
		if (i != 2 && !isdigit((unsigned char)d[i]))
			return false;
	int hh = (d[0] - '0') * 10 + (d[1] - '0'), mm = (d[3] - '0') * 10 + (d[4] - '0');
	if (hh > 23 || mm > 59)
		return false;
	*offset_s = (*p == '-' ? -1 : 1) * (hh * 3600 + mm * 60);
	return true;
}

bool redrive_parse_time(const char *text, int64_t *epoch_ms)
{
	struct tm tm = {0};
	const char *rest = strptime(text, "%Y-%m-%dT%H:%M:%S", &tm);
	if (!rest || strlen(text) < 19 || (text[10] != 'T' && text[10] != 't'))
		return false;
	int64_t frac;
	int offset;
	if (!parse_zone(rest, &frac, &offset))
		return false;
	time_t t = timegm(&tm);
	if (t == (time_t)-1 && !(tm.tm_year == 69 && tm.tm_mday == 31))
		return false;
	*epoch_ms = ((int64_t)t - offset) * 1000 + frac;
	return true;
}
