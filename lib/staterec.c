/* staterec.c - the state topic's record format: headers and values, written and read. */
#include "staterec.h"

#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jsondoc.h"
#include "kafka.h"

/* Graph's request-ids are GUIDs; anything much longer is not one. */
#define REQUEST_ID_MAX 63
/* An operation record is {"location", "startedAt", "attempts", "requestId"}: flat. */
#define OPERATION_JSON_DEPTH 4

const char *staterec_kind_name(enum state_kind kind)
{
	switch (kind) {
	case STATE_INTENT:
		return "intent";
	case STATE_OPERATION:
		return "operation";
	case STATE_DONE:
		return "done";
	case STATE_NONE:
		break;
	}
	return "none";
}

/* ---- writing ---- */

static bool add_text(rd_kafka_headers_t *h, const char *name, const char *value)
{
	return rd_kafka_header_add(h, name, -1, value, -1) == 0;
}

static bool add_number(rd_kafka_headers_t *h, const char *name, int64_t value)
{
	char text[24];
	snprintf(text, sizeof text, "%lld", (long long)value);
	return add_text(h, name, text);
}

/* A new header list with the kind; NULL: out of memory. */
static rd_kafka_headers_t *headers_of(const char *kind_name, size_t room)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(room);
	if (h && !add_text(h, STATE_HEADER, kind_name)) {
		rd_kafka_headers_destroy(h);
		h = NULL;
	}
	return h;
}

rd_kafka_headers_t *staterec_headers(enum state_kind kind)
{
	return headers_of(staterec_kind_name(kind), 1);
}

rd_kafka_headers_t *staterec_done_headers(const char *status, int64_t intent_wall_ms,
                                          int64_t unknown_since_wall_ms)
{
	rd_kafka_headers_t *h = headers_of(staterec_kind_name(STATE_DONE), 4);
	if (h && add_text(h, STATE_STATUS_HEADER, status) &&
	    (!intent_wall_ms || add_number(h, STATE_INTENT_AT_HEADER, intent_wall_ms)) &&
	    (!unknown_since_wall_ms ||
	     add_number(h, STATE_HEADER_OUTCOME_UNKNOWN, unknown_since_wall_ms)))
		return h;
	if (h)
		rd_kafka_headers_destroy(h);
	return NULL;
}

rd_kafka_headers_t *staterec_mark_headers(void)
{
	return headers_of(STATE_MARK_KIND, 1);
}

void staterec_intent_value(char *out, size_t cap, int64_t at_wall_ms, const char *client_request_id)
{
	snprintf(out, cap, "{\"at\":%lld,\"clientRequestId\":\"%s\"}", (long long)at_wall_ms,
	         client_request_id);
}

char *staterec_operation_value(const struct staterec_operation *op)
{
	struct json_object *o = json_object_new_object();
	char *value = NULL;
	if (!o)
		return NULL;
	json_object_object_add(o, "location", json_object_new_string(op->location));
	json_object_object_add(o, "startedAt", json_object_new_int64(op->started_wall_ms));
	json_object_object_add(o, "attempts", json_object_new_int64(op->attempts));
	if (op->request_id && op->request_id[0])
		json_object_object_add(o, "requestId", json_object_new_string(op->request_id));
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
	                                                         JSON_C_TO_STRING_NOSLASHESCAPE);
	if (text)
		value = strdup(text);
	json_object_put(o);
	return value;
}

/* ---- reading ---- */

static rd_kafka_headers_t *headers_of_msg(const rd_kafka_message_t *msg)
{
	rd_kafka_headers_t *h = NULL;
	if (rd_kafka_message_headers(msg, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return NULL;
	return h;
}

enum state_kind staterec_kind(const rd_kafka_message_t *msg)
{
	char name[16];
	if (!kafka_header_text(headers_of_msg(msg), STATE_HEADER, name, sizeof name))
		return STATE_NONE;
	for (enum state_kind k = STATE_INTENT; k <= STATE_DONE; k++)
		if (strcmp(name, staterec_kind_name(k)) == 0)
			return k;
	return STATE_NONE;
}

bool staterec_succeeded(const rd_kafka_message_t *msg)
{
	return staterec_kind(msg) == STATE_DONE &&
	       kafka_header_is(headers_of_msg(msg), STATE_STATUS_HEADER, "succeeded");
}

/* A whole decimal number, nothing else. */
static bool decimal_value(const char *text, int64_t *out)
{
	char *end = NULL;
	errno = 0;
	long long v = strtoll(text, &end, 10);
	if (errno != 0 || end == text || *end != '\0')
		return false;
	*out = v;
	return true;
}

bool staterec_has(const rd_kafka_message_t *msg, const char *header)
{
	return kafka_header_has(headers_of_msg(msg), header);
}

bool staterec_number(const rd_kafka_message_t *msg, const char *header, int64_t *out)
{
	char text[24];
	return kafka_header_text(headers_of_msg(msg), header, text, sizeof text) &&
	       decimal_value(text, out);
}

bool staterec_is_mark(const rd_kafka_message_t *msg)
{
	return msg->key && msg->key_len == strlen(STATE_MARK_KEY) &&
	       memcmp(msg->key, STATE_MARK_KEY, msg->key_len) == 0 &&
	       kafka_header_is(headers_of_msg(msg), STATE_HEADER, STATE_MARK_KIND);
}

bool staterec_mark_offset(const rd_kafka_message_t *msg, int64_t *offset)
{
	char text[24];
	if (!msg->payload || msg->len >= sizeof text)
		return false;
	memcpy(text, msg->payload, msg->len);
	text[msg->len] = '\0';
	return decimal_value(text, offset) && *offset >= 0;
}

/* A string member of root, or "" when absent, not a string or longer than max. */
static const char *short_string(struct json_object *root, const char *key, size_t max)
{
	struct json_object *v = NULL;
	if (!json_object_object_get_ex(root, key, &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    (size_t)json_object_get_string_len(v) > max)
		return "";
	return json_object_get_string(v);
}

/* "location\0request-id\0" in one block. */
static char *two_strings(const char *first, const char *second)
{
	size_t a = strlen(first) + 1, b = strlen(second) + 1;
	char *block = malloc(a + b);
	if (block) {
		memcpy(block, first, a);
		memcpy(block + a, second, b);
	}
	return block;
}

bool staterec_read_operation(const rd_kafka_message_t *msg, char **strings,
                             int64_t *started_wall_ms, unsigned *attempts)
{
	struct jsondoc_error jerr;
	struct json_object *root = NULL, *loc = NULL, *started = NULL, *n = NULL;
	if (msg->payload && msg->len)
		root = jsondoc_parse(msg->payload, msg->len, OPERATION_JSON_DEPTH, &jerr);
	bool ok = root && json_object_object_get_ex(root, "location", &loc) &&
	          json_object_is_type(loc, json_type_string) &&
	          json_object_object_get_ex(root, "startedAt", &started);
	if (ok) {
		/* requestId and attempts: absent in records of older versions. */
		*strings = two_strings(json_object_get_string(loc),
		                       short_string(root, "requestId", REQUEST_ID_MAX));
		ok = *strings != NULL;
		*started_wall_ms = json_object_get_int64(started);
		int64_t count =
		    json_object_object_get_ex(root, "attempts", &n) ? json_object_get_int64(n) : 0;
		*attempts = count > 0 && count <= UINT32_MAX ? (unsigned)count : 0;
	}
	json_object_put(root);
	return ok;
}
