/*
 * graphresp.c - bounded parsers of Microsoft Graph responses.
 */
#include "graphresp.h"

#include <ctype.h>
#include <curl/curl.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "jsondoc.h"

/* Graph's documents are shallow; deeper nesting is hostile. */
#define GRAPHRESP_JSON_DEPTH 64

enum copy { COPY_ABSENT, COPY_OK, COPY_TOO_LONG, COPY_BAD_TYPE };

static bool fail_msg(char *err, size_t errcap, const char *fmt, ...) CP_PRINTF(3, 4);

static bool fail_msg(char *err, size_t errcap, const char *fmt, ...)
{
	if (err && errcap) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errcap, fmt, ap);
		va_end(ap);
	}
	return false;
}

/* Parses a whole body as one JSON object, refusing oversized bodies and trailing data. */
static json_object *parse_object(const char *body, size_t len, size_t max, char *err, size_t errcap)
{
	if (!body || len == 0)
		return fail_msg(err, errcap, "empty body"), NULL;
	if (len > max)
		return fail_msg(err, errcap, "body of %zu bytes exceeds %zu", len, max), NULL;
	if (memchr(body, '\0', len))
		return fail_msg(err, errcap, "NUL byte in body"), NULL;
	struct jsondoc_error jerr;
	json_object *root = jsondoc_parse(body, len, GRAPHRESP_JSON_DEPTH, &jerr);
	if (!root && jerr.status == JSONDOC_NO_MEMORY)
		return fail_msg(err, errcap, "out of memory"), NULL;
	if (!root && jerr.status != JSONDOC_TRAILING)
		return fail_msg(err, errcap, "invalid JSON at offset %zu: %s", jerr.offset,
		                jerr.what),
		       NULL;
	if (!root || !json_object_is_type(root, json_type_object)) {
		json_object_put(root);
		return fail_msg(err, errcap, "body is not one JSON object"), NULL;
	}
	return root;
}

/* The string field key of obj, with its length; null counts as absent. */
static enum copy string_field(json_object *obj, const char *key, const char **s, size_t *n)
{
	json_object *v;
	if (!json_object_object_get_ex(obj, key, &v) || v == NULL)
		return COPY_ABSENT;
	if (!json_object_is_type(v, json_type_string))
		return COPY_BAD_TYPE;
	*s = json_object_get_string(v);
	*n = (size_t)json_object_get_string_len(v);
	return COPY_OK;
}

/* Copies string field key into dst (cap bytes); embedded NULs and overlong values refused. */
static enum copy copy_str(json_object *obj, const char *key, char *dst, size_t cap)
{
	const char *s;
	size_t n;
	dst[0] = '\0';
	enum copy r = string_field(obj, key, &s, &n);
	if (r != COPY_OK)
		return r;
	if (n >= cap || strlen(s) != n)
		return COPY_TOO_LONG;
	memcpy(dst, s, n + 1);
	return COPY_OK;
}

/* Like copy_str, but long texts are cut at a UTF-8 character boundary. */
static enum copy copy_text(json_object *obj, const char *key, char *dst, size_t cap)
{
	const char *s;
	size_t full;
	dst[0] = '\0';
	enum copy r = string_field(obj, key, &s, &full);
	if (r != COPY_OK)
		return r;
	size_t n = strnlen(s, cap - 1);
	while (n > 0 && s[n] != '\0' && ((unsigned char)s[n] & 0xc0) == 0x80)
		n--;
	memcpy(dst, s, n);
	dst[n] = '\0';
	return COPY_OK;
}

/* Optional fields: a wrong type is an error, a value that does not fit is dropped. */
static bool optional_str(json_object *obj, const char *key, char *dst, size_t cap, char *err,
                         size_t errcap)
{
	enum copy r = copy_str(obj, key, dst, cap);
	if (r == COPY_BAD_TYPE)
		return fail_msg(err, errcap, "%s: not a string", key);
	if (r == COPY_TOO_LONG)
		dst[0] = '\0';
	return true;
}

static bool required_str(json_object *obj, const char *key, char *dst, size_t cap, char *err,
                         size_t errcap)
{
	switch (copy_str(obj, key, dst, cap)) {
	case COPY_ABSENT:
		return fail_msg(err, errcap, "%s: missing", key);
	case COPY_BAD_TYPE:
		return fail_msg(err, errcap, "%s: not a string", key);
	case COPY_TOO_LONG:
		return fail_msg(err, errcap, "%s: longer than %zu bytes", key, cap - 1);
	case COPY_OK:
		break;
	}
	if (dst[0] == '\0')
		return fail_msg(err, errcap, "%s: empty", key);
	return true;
}

static bool chat_from_json(json_object *o, struct graphresp_chat *out, char *err, size_t errcap)
{
	memset(out, 0, sizeof *out);
	if (!required_str(o, "id", out->id, sizeof out->id, err, errcap))
		return false;
	enum copy t = copy_str(o, "topic", out->topic, sizeof out->topic);
	if (t == COPY_BAD_TYPE)
		return fail_msg(err, errcap, "topic: not a string");
	if (t == COPY_TOO_LONG)
		out->topic[0] = '\0';
	out->has_topic = t == COPY_OK;
	return optional_str(o, "chatType", out->chat_type, sizeof out->chat_type, err, errcap) &&
	       optional_str(o, "webUrl", out->web_url, sizeof out->web_url, err, errcap) &&
	       optional_str(o, "createdDateTime", out->created, sizeof out->created, err, errcap) &&
	       optional_str(o, "tenantId", out->tenant_id, sizeof out->tenant_id, err, errcap);
}

bool graphresp_parse_chat(const char *body, size_t len, struct graphresp_chat *out, char *err,
                          size_t errcap)
{
	memset(out, 0, sizeof *out);
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_BODY, err, errcap);
	if (!root)
		return false;
	bool ok = chat_from_json(root, out, err, errcap);
	json_object_put(root);
	return ok;
}

static enum graphresp_op_status op_status(const char *s)
{
	static const struct {
		const char *name;
		enum graphresp_op_status st;
	} map[] = {{"notStarted", GRAPHRESP_OP_NOT_STARTED},
	           {"inProgress", GRAPHRESP_OP_IN_PROGRESS},
	           {"succeeded", GRAPHRESP_OP_SUCCEEDED},
	           {"failed", GRAPHRESP_OP_FAILED}};
	for (size_t i = 0; i < CP_ARRAY_LEN(map); i++) {
		if (strcmp(s, map[i].name) == 0)
			return map[i].st;
	}
	return GRAPHRESP_OP_UNKNOWN;
}

/* attemptsCount: an integer; absent or null is 0. */
static bool op_attempts(json_object *o, int *out, char *err, size_t errcap)
{
	json_object *v;
	*out = 0;
	if (!json_object_object_get_ex(o, "attemptsCount", &v) || v == NULL)
		return true;
	if (!json_object_is_type(v, json_type_int))
		return fail_msg(err, errcap, "attemptsCount: not an integer");
	int64_t n = json_object_get_int64(v);
	if (n < 0 || n > 1000000)
		return fail_msg(err, errcap, "attemptsCount: out of range");
	*out = (int)n;
	return true;
}

static bool op_error(json_object *o, struct graphresp_operation *out, char *err, size_t errcap)
{
	json_object *e;
	if (!json_object_object_get_ex(o, "error", &e) || e == NULL)
		return true;
	if (!json_object_is_type(e, json_type_object))
		return fail_msg(err, errcap, "error: not an object");
	if (copy_text(e, "code", out->error_code, sizeof out->error_code) == COPY_BAD_TYPE ||
	    copy_text(e, "message", out->error_message, sizeof out->error_message) == COPY_BAD_TYPE)
		return fail_msg(err, errcap, "error: code and message must be strings");
	return true;
}

bool graphresp_parse_operation(const char *body, size_t len, struct graphresp_operation *out,
                               char *err, size_t errcap)
{
	bool ok = false;
	memset(out, 0, sizeof *out);
	out->status = GRAPHRESP_OP_UNKNOWN;
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_BODY, err, errcap);
	if (!root)
		return false;
	char status[64];
	if (!required_str(root, "status", status, sizeof status, err, errcap))
		goto fail;
	out->status = op_status(status);
	snprintf(out->status_text, sizeof out->status_text, "%.31s", status);
	if (!optional_str(root, "id", out->id, sizeof out->id, err, errcap) ||
	    !optional_str(root, "targetResourceId", out->target_resource_id,
	                  sizeof out->target_resource_id, err, errcap) ||
	    !optional_str(root, "targetResourceLocation", out->target_resource_location,
	                  sizeof out->target_resource_location, err, errcap) ||
	    !op_attempts(root, &out->attempts_count, err, errcap) ||
	    !op_error(root, out, err, errcap))
		goto fail;
	ok = true;
fail:
	json_object_put(root);
	return ok;
}

bool graphresp_parse_error(const char *body, size_t len, struct graphresp_error *out)
{
	json_object *e, *inner;
	bool ok = false;
	memset(out, 0, sizeof *out);
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_BODY, NULL, 0);
	if (!root)
		return false;
	if (!json_object_object_get_ex(root, "error", &e) ||
	    !json_object_is_type(e, json_type_object))
		goto fail;
	if (copy_text(e, "code", out->code, sizeof out->code) != COPY_OK || !out->code[0])
		goto fail;
	if (copy_text(e, "message", out->message, sizeof out->message) == COPY_BAD_TYPE)
		goto fail;
	if (json_object_object_get_ex(e, "innerError", &inner) &&
	    json_object_is_type(inner, json_type_object) &&
	    copy_str(inner, "request-id", out->request_id, sizeof out->request_id) != COPY_OK)
		out->request_id[0] = '\0';
	ok = true;
fail:
	json_object_put(root);
	if (!ok)
		memset(out, 0, sizeof *out);
	return ok;
}

/* Retry-After delta-seconds, possibly fractional; saturates at the cap. */
static bool retry_after_seconds(const char *s, int64_t *delay_ms)
{
	int64_t sec = 0, ms = 0;
	const int64_t cap_s = GRAPHRESP_MAX_RETRY_AFTER_MS / 1000;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (sec <= cap_s)
			sec = sec * 10 + (*s - '0');
	}
	if (*s == '.') {
		int digits = 0;
		bool rest = false;
		for (s++; *s >= '0' && *s <= '9'; s++, digits++) {
			if (digits < 3)
				ms = ms * 10 + (*s - '0');
			else if (*s != '0')
				rest = true;
		}
		if (digits == 0)
			return false;
		for (int d = digits; d < 3; d++)
			ms *= 10;
		ms += rest; /* round up: never retry early */
	}
	if (*s != '\0')
		return false;
	int64_t total = sec > cap_s ? GRAPHRESP_MAX_RETRY_AFTER_MS : sec * 1000 + ms;
	*delay_ms = total > GRAPHRESP_MAX_RETRY_AFTER_MS ? GRAPHRESP_MAX_RETRY_AFTER_MS : total;
	return true;
}

/*
 * An HTTP date in any of the three forms of RFC 9110 section 5.6.7; libcurl's parser does
 * the work. curl_getdate is liberal, so the shape is checked first: only the characters
 * those forms use, a letter (day or month name) and an hh:mm:ss time.
 */
static bool retry_after_date(const char *s, int64_t now_ms, int64_t *delay_ms)
{
	size_t n = strlen(s), colons = 0;
	bool letter = false;
	if (n < 20 || n > 64)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z');
		letter |= alpha;
		colons += ch == ':';
		if (!alpha && !(ch >= '0' && ch <= '9') && !strchr(" ,:-", ch))
			return false;
	}
	if (!letter || colons != 2)
		return false;
	time_t t = curl_getdate(s, NULL);
	if (t == (time_t)-1)
		return false;
	/* Years far ahead are valid dates: compare in seconds first so nothing overflows. */
	int64_t when_ms, delta_s = (int64_t)t - now_ms / 1000;
	if (delta_s > GRAPHRESP_MAX_RETRY_AFTER_MS / 1000 + 1) {
		*delay_ms = GRAPHRESP_MAX_RETRY_AFTER_MS;
		return true;
	}
	if (delta_s < -1 || __builtin_mul_overflow((int64_t)t, 1000, &when_ms) ||
	    __builtin_sub_overflow(when_ms, now_ms, &when_ms) || when_ms < 0)
		when_ms = 0;
	*delay_ms = when_ms > GRAPHRESP_MAX_RETRY_AFTER_MS ? GRAPHRESP_MAX_RETRY_AFTER_MS : when_ms;
	return true;
}

bool graphresp_parse_retry_after(const char *value, int64_t now_epoch_ms, int64_t *delay_ms)
{
	char v[128];
	if (!value)
		return false;
	/* Optional whitespace around a field value (RFC 9110 section 5.5). */
	while (*value == ' ' || *value == '\t')
		value++;
	size_t n = strnlen(value, sizeof v);
	if (n == sizeof v)
		return false;
	while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t'))
		n--;
	if (n == 0)
		return false;
	memcpy(v, value, n);
	v[n] = '\0';
	if (v[0] >= '0' && v[0] <= '9')
		return retry_after_seconds(v, delay_ms);
	return retry_after_date(v, now_epoch_ms, delay_ms);
}

/* n decimal digits at *s, advancing it. */
static bool digits(const char **s, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		char ch = (*s)[i];
		if (ch < '0' || ch > '9')
			return false;
		v = v * 10 + (ch - '0');
	}
	*s += n;
	*out = v;
	return true;
}

static bool expect(const char **s, char ch)
{
	if (**s != ch && !(ch == 'T' && **s == 't'))
		return false;
	(*s)++;
	return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/* The zone: Z or +hh:mm / -hh:mm, as an offset in minutes. */
static bool tz_offset(const char **s, int *minutes)
{
	int sign, hh, mm;
	if (**s == 'Z' || **s == 'z') {
		(*s)++;
		*minutes = 0;
		return true;
	}
	if (**s != '+' && **s != '-')
		return false;
	sign = **s == '-' ? -1 : 1;
	(*s)++;
	if (!digits(s, 2, &hh) || !expect(s, ':') || !digits(s, 2, &mm) || hh > 23 || mm > 59)
		return false;
	*minutes = sign * (hh * 60 + mm);
	return true;
}

bool graphresp_parse_datetime(const char *s, int64_t *epoch_ms)
{
	static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	int y, mo, d, h, mi, sec, ms = 0, off;
	if (!s || !digits(&s, 4, &y) || !expect(&s, '-') || !digits(&s, 2, &mo) ||
	    !expect(&s, '-') || !digits(&s, 2, &d) || !expect(&s, 'T') || !digits(&s, 2, &h) ||
	    !expect(&s, ':') || !digits(&s, 2, &mi) || !expect(&s, ':') || !digits(&s, 2, &sec))
		return false;
	if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || sec > 60)
		return false;
	if (*s == '.') {
		int n = 0;
		for (s++; *s >= '0' && *s <= '9'; s++, n++) {
			if (n < 3)
				ms = ms * 10 + (*s - '0');
		}
		if (n == 0)
			return false;
		for (; n < 3; n++)
			ms *= 10;
	}
	if (!tz_offset(&s, &off) || *s != '\0')
		return false;
	int64_t days = days_from_civil(y, mo, d);
	int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec - (int64_t)off * 60;
	*epoch_ms = secs * 1000 + ms;
	return true;
}

/* Does user j of the query match this member: "userId" or "email" is its id (any case), or
 * "userId" is its resolved object id? */
static bool member_has(json_object *m, const struct graphresp_lookup_query *q, size_t j)
{
	static const char *const keys[] = {"userId", "email"};
	const char *oid = q->object_ids ? q->object_ids[j] : NULL;
	json_object *v;
	for (size_t k = 0; k < CP_ARRAY_LEN(keys); k++) {
		if (!json_object_object_get_ex(m, keys[k], &v) ||
		    !json_object_is_type(v, json_type_string))
			continue;
		const char *s = json_object_get_string(v);
		if (strcasecmp(s, q->user_ids[j]) == 0 ||
		    (k == 0 && oid && strcasecmp(s, oid) == 0))
			return true;
	}
	return false;
}

/* Is every member one of the query's users? */
static bool members_within(json_object *arr, const struct graphresp_lookup_query *q)
{
	size_t n = q->n_user_ids;
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *m = json_object_array_get_idx(arr, i);
		bool any = false;
		if (!json_object_is_type(m, json_type_object))
			return false;
		for (size_t j = 0; j < n && !any; j++)
			any = member_has(m, q, j);
		if (!any)
			return false;
	}
	return true;
}

/* Are the members exactly the query's users (each one some user, each user some member)? */
static bool members_are(json_object *arr, const struct graphresp_lookup_query *q)
{
	size_t n = q->n_user_ids;
	if (json_object_array_length(arr) != n || !members_within(arr, q))
		return false;
	for (size_t j = 0; j < n; j++) {
		bool any = false;
		for (size_t i = 0; i < n && !any; i++)
			any = member_has(json_object_array_get_idx(arr, i), q, j);
		if (!any)
			return false;
	}
	return true;
}

enum chat_match { CHAT_OTHER, CHAT_MATCH, CHAT_CANDIDATE };

/* The members a chat lists: the chat, another one, or a candidate (capped list). */
static enum chat_match members_match(json_object *chat, const struct graphresp_lookup_query *q)
{
	json_object *arr;
	if (!json_object_object_get_ex(chat, "members", &arr) ||
	    !json_object_is_type(arr, json_type_array))
		return CHAT_OTHER;
	if (members_are(arr, q))
		return CHAT_MATCH;
	if (q->n_user_ids > GRAPHRESP_EXPAND_MEMBERS_MAX &&
	    json_object_array_length(arr) == GRAPHRESP_EXPAND_MEMBERS_MAX && members_within(arr, q))
		return CHAT_CANDIDATE;
	return CHAT_OTHER;
}

/* Whether chat is the one the query describes; *created_ms set unless CHAT_OTHER. */
static enum chat_match chat_matches(json_object *chat, const struct graphresp_lookup_query *q,
                                    int64_t *created_ms)
{
	json_object *v;
	if (!json_object_is_type(chat, json_type_object))
		return CHAT_OTHER;
	if (!json_object_object_get_ex(chat, "topic", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    (size_t)json_object_get_string_len(v) != strlen(q->topic) ||
	    strcmp(json_object_get_string(v), q->topic) != 0)
		return CHAT_OTHER;
	if (json_object_object_get_ex(chat, "chatType", &v) &&
	    (!json_object_is_type(v, json_type_string) ||
	     strcmp(json_object_get_string(v), "group") != 0))
		return CHAT_OTHER;
	if (!json_object_object_get_ex(chat, "createdDateTime", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    !graphresp_parse_datetime(json_object_get_string(v), created_ms) ||
	    *created_ms < q->created_after_ms)
		return CHAT_OTHER;
	return members_match(chat, q);
}

static void take_match(struct graphresp_lookup_result *out, const struct graphresp_chat *chat,
                       int64_t created)
{
	out->matches++;
	if (!out->found || created < out->created_ms) {
		out->found = true;
		out->chat = *chat;
		out->created_ms = created;
	}
}

static void take_candidate(struct graphresp_lookup_result *out, const struct graphresp_chat *chat,
                           int64_t created)
{
	if (out->n_candidates < GRAPHRESP_LOOKUP_CANDIDATES) {
		out->candidates[out->n_candidates] = *chat;
		out->candidate_created_ms[out->n_candidates] = created;
	}
	out->n_candidates++;
}

static bool lookup_page(json_object *root, const struct graphresp_lookup_query *q,
                        struct graphresp_lookup_result *out, char *err, size_t errcap)
{
	json_object *arr;
	struct graphresp_chat chat;
	char cerr[64];
	if (!json_object_object_get_ex(root, "value", &arr) ||
	    !json_object_is_type(arr, json_type_array))
		return fail_msg(err, errcap, "value: missing or not an array");
	if (copy_str(root, "@odata.nextLink", out->next_link, sizeof out->next_link) > COPY_OK)
		return fail_msg(err, errcap, "@odata.nextLink: not a string or too long");
	for (size_t i = 0; i < json_object_array_length(arr); i++) {
		json_object *c = json_object_array_get_idx(arr, i);
		int64_t created;
		enum chat_match how = chat_matches(c, q, &created);
		if (how == CHAT_OTHER || !chat_from_json(c, &chat, cerr, sizeof cerr))
			continue;
		if (how == CHAT_MATCH)
			take_match(out, &chat, created);
		else
			take_candidate(out, &chat, created);
	}
	return true;
}

bool graphresp_parse_lookup(const char *body, size_t len, const struct graphresp_lookup_query *q,
                            struct graphresp_lookup_result *out, char *err, size_t errcap)
{
	memset(out, 0, sizeof *out);
	if (!q || !q->topic || (q->n_user_ids && !q->user_ids))
		return fail_msg(err, errcap, "invalid lookup query");
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_LOOKUP_BODY, err, errcap);
	if (!root)
		return false;
	bool ok = lookup_page(root, q, out, err, errcap);
	json_object_put(root);
	if (!ok)
		memset(out, 0, sizeof *out);
	return ok;
}

bool graphresp_parse_members(const char *body, size_t len, const struct graphresp_lookup_query *q,
                             bool *match, char *err, size_t errcap)
{
	json_object *arr;
	*match = false;
	if (!q || (q->n_user_ids && !q->user_ids))
		return fail_msg(err, errcap, "invalid lookup query");
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_LOOKUP_BODY, err, errcap);
	if (!root)
		return false;
	bool ok = json_object_object_get_ex(root, "value", &arr) &&
	          json_object_is_type(arr, json_type_array);
	if (ok)
		*match = members_are(arr, q);
	else
		fail_msg(err, errcap, "value: missing or not an array");
	json_object_put(root);
	return ok;
}

/* 8-4-4-4-12 hexadecimal digits. */
static bool is_guid(const char *s)
{
	for (size_t i = 0; i < 36; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;
		if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
			return false;
	}
	return s[36] == '\0';
}

bool graphresp_parse_user(const char *body, size_t len, struct graphresp_user *out, char *err,
                          size_t errcap)
{
	memset(out, 0, sizeof *out);
	json_object *root = parse_object(body, len, GRAPHRESP_MAX_BODY, err, errcap);
	if (!root)
		return false;
	bool ok = required_str(root, "id", out->id, sizeof out->id, err, errcap);
	json_object_put(root);
	if (ok && !is_guid(out->id))
		ok = fail_msg(err, errcap, "id: not a GUID");
	if (!ok) {
		memset(out, 0, sizeof *out);
		return false;
	}
	for (char *p = out->id; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return true;
}
