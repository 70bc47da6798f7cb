/*
 * event.h - decoder and validator of chatprov.request.v1, the input event.
 *
 * The Kafka message value is checked against the contract (docs/events.md) before anything
 * else touches it: size limit first (before parsing), then JSON with a nesting limit and UTF-8
 * validation, then every field. A rejected event gets one precise, human-readable reason
 * naming the field path ("members[2].userId: not a GUID or user principal name").
 */
#ifndef CHATPROV_EVENT_H
#define CHATPROV_EVENT_H

#include "common.h"

/* Fixed by the contract. */
#define EVENT_ID_MAX_CHARS 200
/*
 * The same limit in bytes, for every buffer and record that holds an id (the state topic's
 * keys, the state mirror, peeked ids): 200 code points of valid UTF-8, at most 4 bytes each.
 */
#define EVENT_ID_MAX_BYTES (EVENT_ID_MAX_CHARS * 4)
#define EVENT_TENANT_MAX   63
/* Defaults of the configurable limits. */
#define EVENT_DEFAULT_MAX_MESSAGE_BYTES ((size_t)1 << 20)
#define EVENT_DEFAULT_MAX_MEMBERS       250
#define EVENT_DEFAULT_MAX_TOPIC_LENGTH  250
/* Hard ceilings: limits above these are clamped (the JSON nesting limit is fixed at 32). */
#define EVENT_HARD_MAX_MESSAGE_BYTES ((size_t)64 << 20)
#define EVENT_HARD_MAX_MEMBERS       10000
#define EVENT_HARD_MAX_TOPIC_LENGTH  4096
/* Size a caller should give event_decode's reason buffer. */
#define EVENT_REASON_SIZE 256

enum event_chat_type { EVENT_CHAT_ONE_ON_ONE, EVENT_CHAT_GROUP };

struct event_member {
	char *user_id;   /* GUID or user principal name, as given */
	bool guest;      /* roles ["guest"]; false means ["owner"] */
	char *tenant_id; /* NULL if absent */
};

struct event_request {
	char *id;
	char *tenant; /* NULL = default profile */
	enum event_chat_type chat_type;
	char *topic; /* NULL if absent */
	size_t n_members;
	struct event_member *members;
	char *app_id; /* NULL if none */
};

struct event_limits {
	size_t max_message_bytes;
	size_t max_members;
	size_t max_topic_length; /* in Unicode code points */
};

/* The defaults above. */
struct event_limits event_limits_default(void);

/*
 * Decodes and validates one message value (lim NULL: the defaults). On success *out is a
 * new request (release with event_free). On failure *out is NULL and reason holds why
 * (truncated to reason_cap).
 * Out of memory is reported as a failure with reason "out of memory".
 */
bool event_decode(const void *buf, size_t len, const struct event_limits *lim,
                  struct event_request **out, char *reason, size_t reason_cap) CP_MUSTCHECK;

void event_free(struct event_request *ev);

/*
 * Best effort: finds the top-level "id" of a message that event_decode rejected, so the
 * rejection result can carry it. Succeeds only for a plain string of 1..200 printable
 * characters without escapes that fits in cap (with its NUL).
 */
bool event_peek_id(const void *buf, size_t len, char *id, size_t cap) CP_MUSTCHECK;

/* The validation rules, shared with the request builder and tests. */
bool event_is_guid(const char *s) CP_MUSTCHECK;
bool event_is_upn(const char *s) CP_MUSTCHECK;

#endif
