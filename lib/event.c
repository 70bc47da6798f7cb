/*
 * event.c - chatprov.request.v1 decoder and validator (rules: docs/events.md).
 */
#include "event.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "jsondoc.h"

/* json-c nesting limit: a valid event is 4 levels deep; 32 leaves room for unknown fields. */
#define EVENT_JSON_DEPTH 32
/* Microsoft's UPN limits: 64 characters before the @, 48 after, 113 in all. */
#define UPN_LOCAL_MAX  64
#define UPN_DOMAIN_MAX 48
#define UPN_MAX        113

enum field { FIELD_ABSENT, FIELD_OK, FIELD_BAD };

/* Decoding state: the limits and where the rejection reason goes. */
struct dctx {
	const struct event_limits *lim;
	char *reason;
	size_t cap;
};

static void set_reason(struct dctx *c, const char *fmt, ...) CP_PRINTF(2, 3);

static void set_reason(struct dctx *c, const char *fmt, ...)
{
	if (c->cap == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->reason, c->cap, fmt, ap);
	va_end(ap);
}

/*
 * Fills the reason and is false. A macro, so the false is visible where it is returned: the
 * static analyzer does not look inside variadic functions and would otherwise follow paths
 * on which a rejected member counts as decoded.
 */
#define REJECT(c, ...) (set_reason((c), __VA_ARGS__), false)

struct event_limits event_limits_default(void)
{
	struct event_limits l = {
	    .max_message_bytes = EVENT_DEFAULT_MAX_MESSAGE_BYTES,
	    .max_members = EVENT_DEFAULT_MAX_MEMBERS,
	    .max_topic_length = EVENT_DEFAULT_MAX_TOPIC_LENGTH,
	};
	return l;
}

static size_t clamp(size_t v, size_t max)
{
	return v > max ? max : v;
}

/*
 * Counts the code points of s (len bytes). False on invalid UTF-8 (overlong forms,
 * surrogates, beyond U+10FFFF) or on a control character (C0, DEL, C1), which have no
 * place in ids and topics and would corrupt logs.
 */
static bool text_ok(const char *s, size_t len, size_t *ncp)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n = 0;
	while (i < len) {
		unsigned c = p[i], need, cp;
		if (c < 0x80) {
			if (c < 0x20 || c == 0x7f)
				return false;
			i++, n++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			need = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			need = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			need = 3, cp = c & 0x07;
		else
			return false;
		if (len - i <= need)
			return false;
		for (unsigned k = 1; k <= need; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = (cp << 6) | (p[i + k] & 0x3f);
		}
		if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
			return false;
		i += need + 1, n++;
	}
	*ncp = n;
	return true;
}

bool event_is_guid(const char *s)
{
	static const size_t dash[] = {8, 13, 18, 23};
	if (strlen(s) != 36)
		return false;
	for (size_t i = 0, d = 0; i < 36; i++) {
		if (d < CP_ARRAY_LEN(dash) && i == dash[d]) {
			if (s[i] != '-')
				return false;
			d++;
		} else if (!isxdigit((unsigned char)s[i])) {
			return false;
		}
	}
	return true;
}

/* Microsoft's UPN character set before the @: A-Z a-z 0-9 ' . - _ ! # ^ ~ */
static bool upn_local_char(char ch)
{
	return isalnum((unsigned char)ch) || strchr("'.-_!#^~", ch) != NULL;
}

/* A DNS name: labels of [A-Za-z0-9-], 1..63 long, no hyphen at either end, two or more. */
static bool upn_domain_ok(const char *d, size_t len)
{
	size_t label = 0, labels = 1;
	if (len == 0 || len > UPN_DOMAIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char ch = d[i];
		if (ch == '.') {
			if (label == 0 || d[i - 1] == '-')
				return false;
			label = 0, labels++;
			continue;
		}
		if (!isalnum((unsigned char)ch) && ch != '-')
			return false;
		if (ch == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 && d[len - 1] != '-' && labels >= 2;
}

bool event_is_upn(const char *s)
{
	size_t len = strlen(s);
	const char *at = strchr(s, '@');
	if (len > UPN_MAX || !at || strchr(at + 1, '@'))
		return false;
	size_t local = (size_t)(at - s);
	if (local == 0 || local > UPN_LOCAL_MAX || s[0] == '.' || at[-1] == '.')
		return false;
	for (size_t i = 0; i < local; i++) {
		if (!upn_local_char(s[i]) || (s[i] == '.' && s[i + 1] == '.'))
			return false;
	}
	return upn_domain_ok(at + 1, len - local - 1);
}

static bool is_tenant_name(const char *s, size_t len)
{
	if (len == 0 || len > EVENT_TENANT_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
			return false;
	}
	return true;
}

/*
 * Looks up key in obj as a string. FIELD_BAD (reason set) for a wrong type or an embedded
 * NUL (json-c accepts "\u0000"); FIELD_ABSENT when missing (null counts as missing only
 * when allow_null).
 */
static enum field get_string(struct dctx *c, json_object *obj, const char *key, const char *path,
                             bool allow_null, const char **s, size_t *len)
{
	json_object *v;
	if (!json_object_object_get_ex(obj, key, &v))
		return FIELD_ABSENT;
	if (v == NULL && allow_null)
		return FIELD_ABSENT;
	if (!json_object_is_type(v, json_type_string)) {
		set_reason(c, "%s: must be a string", path);
		return FIELD_BAD;
	}
	*s = json_object_get_string(v);
	*len = (size_t)json_object_get_string_len(v);
	if (strlen(*s) != *len) {
		set_reason(c, "%s: contains a NUL character", path);
		return FIELD_BAD;
	}
	return FIELD_OK;
}

static char *dup_or_oom(struct dctx *c, const char *s)
{
	char *d = strdup(s);
	if (!d)
		set_reason(c, "out of memory");
	return d;
}

static bool decode_id(struct dctx *c, json_object *root, struct event_request *ev)
{
	const char *s;
	size_t len, n;
	switch (get_string(c, root, "id", "id", false, &s, &len)) {
	case FIELD_ABSENT:
		return REJECT(c, "id: missing");
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (len == 0)
		return REJECT(c, "id: empty");
	if (!text_ok(s, len, &n))
		return REJECT(c, "id: contains a control character or invalid UTF-8");
	if (n > EVENT_ID_MAX_CHARS)
		return REJECT(c, "id: %zu characters exceeds %d", n, EVENT_ID_MAX_CHARS);
	/* Implied by the two checks above (UTF-8 is at most 4 bytes a code point): the
	 * bound every id buffer downstream is sized for. */
	if (len > EVENT_ID_MAX_BYTES)
		return REJECT(c, "id: %zu bytes exceeds %d", len, EVENT_ID_MAX_BYTES);
	ev->id = dup_or_oom(c, s);
	return ev->id != NULL;
}

static bool decode_tenant(struct dctx *c, json_object *root, struct event_request *ev)
{
	const char *s;
	size_t len;
	switch (get_string(c, root, "tenant", "tenant", true, &s, &len)) {
	case FIELD_ABSENT:
		return true;
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (!is_tenant_name(s, len))
		return REJECT(c, "tenant: must be 1..%d characters of A-Z a-z 0-9 _ . -",
		              EVENT_TENANT_MAX);
	ev->tenant = dup_or_oom(c, s);
	return ev->tenant != NULL;
}

static bool decode_chat_type(struct dctx *c, json_object *root, struct event_request *ev)
{
	const char *s;
	size_t len;
	switch (get_string(c, root, "chatType", "chatType", false, &s, &len)) {
	case FIELD_ABSENT:
		return REJECT(c, "chatType: missing");
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (strcmp(s, "oneOnOne") == 0)
		ev->chat_type = EVENT_CHAT_ONE_ON_ONE;
	else if (strcmp(s, "group") == 0)
		ev->chat_type = EVENT_CHAT_GROUP;
	else
		return REJECT(c, "chatType: must be \"oneOnOne\" or \"group\"");
	return true;
}

static bool decode_topic(struct dctx *c, json_object *root, struct event_request *ev)
{
	const char *s;
	size_t len, n;
	switch (get_string(c, root, "topic", "topic", true, &s, &len)) {
	case FIELD_ABSENT:
		return true;
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (ev->chat_type != EVENT_CHAT_GROUP)
		return REJECT(c, "topic: only allowed on group chats");
	if (len == 0)
		return REJECT(c, "topic: empty");
	if (!text_ok(s, len, &n))
		return REJECT(c, "topic: contains a control character or invalid UTF-8");
	size_t max = clamp(c->lim->max_topic_length, EVENT_HARD_MAX_TOPIC_LENGTH);
	if (n > max)
		return REJECT(c, "topic: %zu characters exceeds max_topic_length %zu", n, max);
	ev->topic = dup_or_oom(c, s);
	return ev->topic != NULL;
}

/* roles: absent, ["owner"] or ["guest"]. */
static bool decode_roles(struct dctx *c, json_object *m, size_t i, struct event_member *mem)
{
	json_object *roles, *r;
	if (!json_object_object_get_ex(m, "roles", &roles) || roles == NULL)
		return true;
	if (!json_object_is_type(roles, json_type_array))
		return REJECT(c, "members[%zu].roles: must be an array", i);
	if (json_object_array_length(roles) != 1)
		return REJECT(c, "members[%zu].roles: must be [\"owner\"] or [\"guest\"]", i);
	r = json_object_array_get_idx(roles, 0);
	const char *s = json_object_is_type(r, json_type_string) ? json_object_get_string(r) : "";
	if (strcmp(s, "owner") == 0)
		mem->guest = false;
	else if (strcmp(s, "guest") == 0)
		mem->guest = true;
	else
		return REJECT(c, "members[%zu].roles: must be [\"owner\"] or [\"guest\"]", i);
	return true;
}

static bool decode_member(struct dctx *c, json_object *m, size_t i, struct event_member *mem)
{
	char path[48];
	const char *s;
	size_t len;
	if (!json_object_is_type(m, json_type_object))
		return REJECT(c, "members[%zu]: must be an object", i);
	snprintf(path, sizeof path, "members[%zu].userId", i);
	switch (get_string(c, m, "userId", path, false, &s, &len)) {
	case FIELD_ABSENT:
		return REJECT(c, "%s: missing", path);
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (!event_is_guid(s) && !event_is_upn(s))
		return REJECT(c, "%s: not a GUID or user principal name", path);
	if (!(mem->user_id = dup_or_oom(c, s)))
		return false;
	if (!decode_roles(c, m, i, mem))
		return false;
	snprintf(path, sizeof path, "members[%zu].tenantId", i);
	switch (get_string(c, m, "tenantId", path, true, &s, &len)) {
	case FIELD_ABSENT:
		return true;
	case FIELD_BAD:
		return false;
	case FIELD_OK:
		break;
	}
	if (!event_is_guid(s))
		return REJECT(c, "%s: not a GUID", path);
	mem->tenant_id = dup_or_oom(c, s);
	return mem->tenant_id != NULL;
}

static bool check_member_count(struct dctx *c, const struct event_request *ev)
{
	if (ev->chat_type == EVENT_CHAT_ONE_ON_ONE && ev->n_members != 2)
		return REJECT(c, "members: a oneOnOne chat needs exactly 2 members, got %zu",
		              ev->n_members);
	if (ev->chat_type == EVENT_CHAT_GROUP && ev->n_members < 2)
		return REJECT(c, "members: a group chat needs at least 2 members, got %zu",
		              ev->n_members);
	/* Graph ids are case-insensitive, so "Alex@x.com" and "alex@x.com" are one user. */
	for (size_t i = 1; i < ev->n_members; i++) {
		for (size_t j = 0; j < i; j++) {
			if (strcasecmp(ev->members[i].user_id, ev->members[j].user_id) == 0)
				return REJECT(c, "members[%zu].userId: duplicate of members[%zu]",
				              i, j);
		}
	}
	return true;
}

static bool decode_members(struct dctx *c, json_object *root, struct event_request *ev)
{
	json_object *arr;
	if (!json_object_object_get_ex(root, "members", &arr) || arr == NULL)
		return REJECT(c, "members: missing");
	if (!json_object_is_type(arr, json_type_array))
		return REJECT(c, "members: must be an array");
	size_t n = json_object_array_length(arr);
	size_t max = clamp(c->lim->max_members, EVENT_HARD_MAX_MEMBERS);
	if (n == 0)
		return REJECT(c, "members: empty");
	if (n > max)
		return REJECT(c, "members: %zu members exceeds max_members %zu", n, max);
	ev->members = calloc(n, sizeof *ev->members);
	if (!ev->members)
		return REJECT(c, "out of memory");
	for (size_t i = 0; i < n; i++) {
		ev->n_members = i + 1; /* so event_free releases what was filled */
		if (!decode_member(c, json_object_array_get_idx(arr, i), i, &ev->members[i]))
			return false;
	}
	return check_member_count(c, ev);
}

static bool decode_apps(struct dctx *c, json_object *root, struct event_request *ev)
{
	json_object *arr, *a;
	if (!json_object_object_get_ex(root, "installedApps", &arr) || arr == NULL)
		return true;
	if (!json_object_is_type(arr, json_type_array))
		return REJECT(c, "installedApps: must be an array");
	size_t n = json_object_array_length(arr);
	if (n == 0)
		return true;
	if (n > 1)
		return REJECT(c, "installedApps: at most one app, got %zu", n);
	a = json_object_array_get_idx(arr, 0);
	if (!json_object_is_type(a, json_type_string))
		return REJECT(c, "installedApps[0]: must be a string");
	if (!event_is_guid(json_object_get_string(a)) ||
	    strlen(json_object_get_string(a)) != (size_t)json_object_get_string_len(a))
		return REJECT(c, "installedApps[0]: not a GUID");
	ev->app_id = dup_or_oom(c, json_object_get_string(a));
	return ev->app_id != NULL;
}

/* Size limit and NUL bytes are checked on the raw bytes, before json-c sees them. */
static json_object *parse_json(struct dctx *c, const char *buf, size_t len)
{
	size_t max = clamp(c->lim->max_message_bytes, EVENT_HARD_MAX_MESSAGE_BYTES);
	if (len == 0)
		return set_reason(c, "message: empty"), NULL;
	if (len > max)
		return set_reason(c, "message: %zu bytes exceeds max_message_bytes %zu", len, max),
		       NULL;
	const char *nul = memchr(buf, '\0', len);
	if (nul)
		return set_reason(c, "message: NUL byte at offset %zu", (size_t)(nul - buf)), NULL;
	struct jsondoc_error jerr;
	json_object *root = jsondoc_parse(buf, len, EVENT_JSON_DEPTH, &jerr);
	if (!root && jerr.status == JSONDOC_NO_MEMORY)
		return set_reason(c, "out of memory"), NULL;
	if (!root && jerr.status == JSONDOC_TRAILING)
		return set_reason(c, "invalid JSON at offset %zu: data after the object",
		                  jerr.offset),
		       NULL;
	if (!root)
		return set_reason(c, "invalid JSON at offset %zu: %s", jerr.offset, jerr.what),
		       NULL;
	return root;
}

bool event_decode(const void *buf, size_t len, const struct event_limits *lim,
                  struct event_request **out, char *reason, size_t reason_cap)
{
	struct event_limits deflim = event_limits_default();
	struct dctx c = {.lim = lim ? lim : &deflim, .reason = reason, .cap = reason_cap};
	struct event_request *ev = NULL;
	json_object *root = NULL;

	*out = NULL;
	if (reason_cap)
		reason[0] = '\0';
	/* Whatever json-c makes of a length above INT_MAX, the size limit refuses it first. */
	if (!(root = parse_json(&c, buf, len)))
		goto fail;
	if (!json_object_is_type(root, json_type_object)) {
		set_reason(&c, "message: not a JSON object");
		goto fail;
	}
	if (!(ev = calloc(1, sizeof *ev))) {
		set_reason(&c, "out of memory");
		goto fail;
	}
	if (!decode_id(&c, root, ev) || !decode_tenant(&c, root, ev) ||
	    !decode_chat_type(&c, root, ev) || !decode_topic(&c, root, ev) ||
	    !decode_members(&c, root, ev) || !decode_apps(&c, root, ev))
		goto fail;
	json_object_put(root);
	*out = ev;
	return true;
fail:
	json_object_put(root);
	event_free(ev);
	return false;
}

void event_free(struct event_request *ev)
{
	if (!ev)
		return;
	for (size_t i = 0; i < ev->n_members; i++) {
		free(ev->members[i].user_id);
		free(ev->members[i].tenant_id);
	}
	free(ev->members);
	free(ev->id);
	free(ev->tenant);
	free(ev->topic);
	free(ev->app_id);
	free(ev);
}

/* Copies a peeked id if it is 1..200 printable characters and fits. */
static bool peek_accept(const char *s, size_t len, char *id, size_t cap)
{
	size_t n;
	if (len == 0 || len >= cap || !text_ok(s, len, &n) || n > EVENT_ID_MAX_CHARS)
		return false;
	memcpy(id, s, len);
	id[len] = '\0';
	return true;
}

/*
 * A tolerant scan for invalid JSON: walks the bytes, tracking strings and nesting, and
 * takes the first "id" key at depth 1 whose value is a string without escapes.
 */
static bool peek_scan(const char *p, size_t len, char *id, size_t cap)
{
	int depth = 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '{' || p[i] == '[') {
			depth++;
		} else if (p[i] == '}' || p[i] == ']') {
			depth--;
		} else if (p[i] == '"') {
			size_t start = ++i;
			while (i < len && p[i] != '"')
				i += p[i] == '\\' ? 2 : 1;
			if (i >= len)
				return false;
			if (depth != 1 || i - start != 2 || memcmp(p + start, "id", 2) != 0)
				continue;
			size_t j = i + 1;
			while (j < len && strchr(" \t\r\n", p[j]) && p[j])
				j++;
			if (j >= len || p[j] != ':')
				continue;
			for (j++; j < len && strchr(" \t\r\n", p[j]) && p[j]; j++)
				;
			if (j >= len || p[j] != '"')
				return false;
			size_t vs = ++j;
			while (j < len && p[j] != '"' && p[j] != '\\')
				j++;
			return j < len && p[j] == '"' && peek_accept(p + vs, j - vs, id, cap);
		}
	}
	return false;
}

bool event_peek_id(const void *buf, size_t len, char *id, size_t cap)
{
	if (cap == 0 || len == 0)
		return false;
	id[0] = '\0';
	/* Messages beyond any size limit are not worth scanning; 64 KiB covers the head. */
	if (len > 64 * 1024)
		len = 64 * 1024;
	return peek_scan(buf, len, id, cap);
}
