/*
 * graphresp.h - parsers of what Microsoft Graph answers: a chat, a teamsAsyncOperation, an
 * error body, Retry-After, and the crash-recovery chat lookup.
 *
 * Graph is outside input: every parser is bounded (body size, JSON nesting, field lengths),
 * never crashes, and fills fixed-size records so nothing it returns needs freeing. Optional
 * string fields that do not fit their record field are left empty (has_* false); human
 * texts (error messages) are truncated at a UTF-8 boundary instead.
 */
#ifndef CHATPROV_GRAPHRESP_H
#define CHATPROV_GRAPHRESP_H

#include "common.h"

/* Bodies larger than this are refused without parsing. */
#define GRAPHRESP_MAX_BODY ((size_t)4 << 20)
/* A lookup page may carry many chats with all their members. */
#define GRAPHRESP_MAX_LOOKUP_BODY ((size_t)32 << 20)
/* Retry-After values beyond this are capped (the caller caps further). */
#define GRAPHRESP_MAX_RETRY_AFTER_MS ((int64_t)24 * 3600 * 1000)

struct graphresp_chat {
	char id[256]; /* required, non-empty */
	char chat_type[16];
	char topic[1024];
	bool has_topic; /* false for null, absent or too long */
	char web_url[2048];
	char created[64]; /* createdDateTime as sent */
	char tenant_id[64];
};

/* A chat resource (the body of a 201). False with err on anything unusable. */
bool graphresp_parse_chat(const char *body, size_t len, struct graphresp_chat *out, char *err,
                          size_t errcap) CP_MUSTCHECK;

enum graphresp_op_status {
	GRAPHRESP_OP_NOT_STARTED,
	GRAPHRESP_OP_IN_PROGRESS,
	GRAPHRESP_OP_SUCCEEDED,
	GRAPHRESP_OP_FAILED,
	GRAPHRESP_OP_UNKNOWN /* unknownFutureValue or a value added later; see status_text */
};

struct graphresp_operation {
	char id[256];
	enum graphresp_op_status status;
	char status_text[32];
	int attempts_count;
	char target_resource_id[256];
	char target_resource_location[512];
	char error_code[128]; /* from "error", when the operation failed */
	char error_message[512];
};

/* A teamsAsyncOperation. "status" is required. */
bool graphresp_parse_operation(const char *body, size_t len, struct graphresp_operation *out,
                               char *err, size_t errcap) CP_MUSTCHECK;

struct graphresp_error {
	char code[128];
	char message[512];
	char request_id[64]; /* innerError."request-id", "" if absent */
};

/* Graph's {"error":{"code","message","innerError":{...}}}. False if the body is not one. */
bool graphresp_parse_error(const char *body, size_t len, struct graphresp_error *out) CP_MUSTCHECK;

/*
 * Retry-After as a delay from now: delta-seconds ("120"), fractional seconds ("2.128" ->
 * 2128 ms, rounded up to the millisecond), or an HTTP date (IMF-fixdate, RFC 850, asctime)
 * relative to now_epoch_ms (a date in the past gives 0). Values beyond
 * GRAPHRESP_MAX_RETRY_AFTER_MS are capped to it. Negative numbers and garbage: false.
 */
bool graphresp_parse_retry_after(const char *value, int64_t now_epoch_ms,
                                 int64_t *delay_ms) CP_MUSTCHECK;

/*
 * Crash recovery: after a group-chat POST with an unknown outcome, the daemon lists
 * GET /users('{owner}')/chats?$filter=topic eq '…'&$expand=members (graphreq_lookup_url)
 * and asks whether the chat it meant to create is there.
 *
 * A chat matches when its topic equals topic byte for byte, its chatType (when present) is
 * "group", its createdDateTime is >= created_after_ms, and its members are exactly the set
 * user_ids: every member matches one of user_ids and every user id matches a member, where
 * an id matches a member whose "userId" or "email" equals it ignoring case, or whose
 * "userId" equals its object id. Graph names members by object id ("userId") and mail
 * ("email"), never by UPN: a member named by a UPN that differs from its mail matches only
 * through object_ids, the ids the daemon resolved (GET /users/{upn}).
 */
struct graphresp_lookup_query {
	const char *topic;
	const char *const *user_ids;
	const char *const *object_ids; /* per user id: its object id, or NULL; NULL: none known */
	size_t n_user_ids;
	int64_t created_after_ms;
};

/*
 * Graph's documented known issue: with $expand=members, a chat list names at most 25 members
 * of a chat. A chat that lists exactly that many, all of them users of a larger query, and
 * matches otherwise is a *candidate*: only its full member list (GET /chats/{id}/members,
 * graphresp_parse_members) says whether it is the chat.
 */
#define GRAPHRESP_EXPAND_MEMBERS_MAX 25
/* Candidates kept per page; more are counted, not kept (the lookup then ends unknown). */
#define GRAPHRESP_LOOKUP_CANDIDATES 4

struct graphresp_lookup_result {
	bool found;                 /* a chat on this page matched */
	size_t matches;             /* how many did (more than one: someone else made one too) */
	struct graphresp_chat chat; /* the oldest match */
	int64_t created_ms;         /* its createdDateTime */
	char next_link[4096];       /* "@odata.nextLink" to fetch next, "" on the last page */
	/* Candidates on this page (see GRAPHRESP_EXPAND_MEMBERS_MAX), oldest first as listed. */
	size_t n_candidates; /* how many were seen (may exceed the ones kept) */
	struct graphresp_chat candidates[GRAPHRESP_LOOKUP_CANDIDATES];
	int64_t candidate_created_ms[GRAPHRESP_LOOKUP_CANDIDATES];
};

/* One page of the lookup. False with err if the page is unusable. */
bool graphresp_parse_lookup(const char *body, size_t len, const struct graphresp_lookup_query *q,
                            struct graphresp_lookup_result *out, char *err,
                            size_t errcap) CP_MUSTCHECK;

/*
 * GET /chats/{id}/members ({"value": [conversationMember...]}): *match is whether the
 * members are exactly the query's users (the rule of graphresp_lookup_query). False with
 * err if the body is unusable.
 */
bool graphresp_parse_members(const char *body, size_t len, const struct graphresp_lookup_query *q,
                             bool *match, char *err, size_t errcap) CP_MUSTCHECK;

/* A user (GET /users/{id | userPrincipalName}?$select=id): its object id. */
struct graphresp_user {
	char id[37]; /* a GUID, lower case */
};

/* False with err unless the body is an object whose "id" is a GUID. */
bool graphresp_parse_user(const char *body, size_t len, struct graphresp_user *out, char *err,
                          size_t errcap) CP_MUSTCHECK;

/* "2020-12-04T23:11:16.175Z" (RFC 3339, any offset) to epoch milliseconds. */
bool graphresp_parse_datetime(const char *s, int64_t *epoch_ms) CP_MUSTCHECK;

#endif
