/*
 * test_graphresp.c - Graph response parsers on valid, truncated, wrong-typed and oversized
 * input; Retry-After in every form; the crash-recovery lookup.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "graphresp.h"

/* Microsoft's documented 201 bodies (examples 2 and 6). */
static const char chat_group[] =
    "{\"@odata.context\":\"https://graph.microsoft.com/beta/$metadata#chats/$entity\","
    "\"id\":\"19:1c5b01696d2e4a179c292bc9cf04e63b@thread.v2\",\"topic\":\"Group chat title\","
    "\"createdDateTime\":\"2020-12-04T23:11:16.175Z\",\"lastUpdatedDateTime\":"
    "\"2020-12-04T23:11:16.175Z\",\"chatType\":\"group\",\"webUrl\":\"https://teams.microsoft."
    "com/l/chat/19%3A1c5b01696d2e4a179c292bc9cf04e63b@thread.v2/0?tenantId=b33cbe9f-8ebe-4f2a-"
    "912b-7e2a427f477f\",\"tenantId\":\"b33cbe9f-8ebe-4f2a-912b-7e2a427f477f\"}";
static const char chat_one[] =
    "{\n \"@odata.context\": \"https://graph.microsoft.com/v1.0/$metadata#chats/$entity\",\n"
    " \"id\": \"19:82af01c5-f7cc-4a2e-a728-3a5df21afd9d_8b081ef6-4792-4def-b2c9-c363a1bf41d5@unq."
    "gbl.spaces\",\n \"topic\": null,\n \"createdDateTime\": \"2020-12-04T23:10:28.51Z\",\n"
    " \"lastUpdatedDateTime\": \"2020-12-04T23:10:28.51Z\",\n \"chatType\": \"oneOnOne\"\n}\n";

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static void test_chat_valid(void **state)
{
	(void)state;
	struct graphresp_chat c;
	char err[256];
	assert_true(graphresp_parse_chat(chat_group, strlen(chat_group), &c, err, sizeof err));
	assert_string_equal(c.id, "19:1c5b01696d2e4a179c292bc9cf04e63b@thread.v2");
	assert_string_equal(c.chat_type, "group");
	assert_true(c.has_topic);
	assert_string_equal(c.topic, "Group chat title");
	assert_string_equal(c.created, "2020-12-04T23:11:16.175Z");
	assert_string_equal(c.tenant_id, "b33cbe9f-8ebe-4f2a-912b-7e2a427f477f");
	assert_non_null(strstr(c.web_url, "https://teams.microsoft.com/l/chat/19%3A1c5b"));
	assert_true(graphresp_parse_chat(chat_one, strlen(chat_one), &c, err, sizeof err));
	assert_false(c.has_topic);
	assert_string_equal(c.chat_type, "oneOnOne");
	assert_string_equal(c.web_url, "");
	/* Not NUL-terminated: only len bytes count. */
	char buf[sizeof chat_group + 8];
	memcpy(buf, chat_group, strlen(chat_group));
	memset(buf + strlen(chat_group), '}', 8);
	assert_true(graphresp_parse_chat(buf, strlen(chat_group), &c, err, sizeof err));
}

static void expect_chat_error(const char *body, size_t len, const char *want)
{
	struct graphresp_chat c;
	char err[256] = "";
	assert_false(graphresp_parse_chat(body, len, &c, err, sizeof err));
	if (strncmp(err, want, strlen(want)) != 0)
		fail_msg("err \"%s\", want \"%s\"", err, want);
}

static void test_chat_invalid(void **state)
{
	(void)state;
	static const struct {
		const char *body, *err;
	} cases[] = {
	    {"", "empty body"},
	    {"{\"id\":\"19:a\"", "invalid JSON at offset 12: unexpected end of input"},
	    {"{\"id\":\"19:a\"} {}", "invalid JSON at offset 14"},
	    {"[{\"id\":\"19:a\"}]", "body is not one JSON object"},
	    {"\"19:a\"", "body is not one JSON object"},
	    {"{\"topic\":\"x\"}", "id: missing"},
	    {"{\"id\":null}", "id: missing"},
	    {"{\"id\":19}", "id: not a string"},
	    {"{\"id\":\"\"}", "id: empty"},
	    {"{\"id\":\"a\\u0000b\"}", "id: longer than 255 bytes"},
	    {"{\"id\":\"19:a\",\"topic\":5}", "topic: not a string"},
	    {"{\"id\":\"19:a\",\"webUrl\":[]}", "webUrl: not a string"},
	    {"{\"id\":\"19:a\",\"chatType\":{}}", "chatType: not a string"},
	    {"{\"id\":\"19:\xff\"}", "invalid JSON at offset"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		expect_chat_error(cases[i].body, strlen(cases[i].body), cases[i].err);
	expect_chat_error("{\"id\":\"a\0\"}", 10, "NUL byte in body");
	/* An id of 256 bytes does not fit; a 3000-byte webUrl is dropped, not an error. */
	char *long_id = repeat('i', 256), body[4096];
	snprintf(body, sizeof body, "{\"id\":\"%s\"}", long_id);
	expect_chat_error(body, strlen(body), "id: longer than 255 bytes");
	free(long_id);
	char *long_url = repeat('u', 3000), *b2 = malloc(3100);
	assert_non_null(b2);
	snprintf(b2, 3100, "{\"id\":\"19:a\",\"webUrl\":\"%s\",\"chatType\":\"group\"}", long_url);
	struct graphresp_chat c;
	char err[128];
	assert_true(graphresp_parse_chat(b2, strlen(b2), &c, err, sizeof err));
	assert_string_equal(c.web_url, "");
	assert_string_equal(c.chat_type, "group");
	free(long_url);
	free(b2);
}

static void test_oversized_and_deep(void **state)
{
	(void)state;
	size_t n = GRAPHRESP_MAX_BODY + 1;
	char *big = repeat(' ', n);
	big[0] = '{';
	big[n - 1] = '}';
	expect_chat_error(big, n, "body of 4194305 bytes exceeds 4194304");
	struct graphresp_operation op;
	char err[128];
	assert_false(graphresp_parse_operation(big, n, &op, err, sizeof err));
	struct graphresp_error ge;
	assert_false(graphresp_parse_error(big, n, &ge));
	free(big);
	char *deep = repeat('[', 100000);
	memcpy(deep, "{\"id\":", 6);
	expect_chat_error(deep, 100000, "invalid JSON at offset");
	assert_false(graphresp_parse_operation(deep, 100000, &op, err, sizeof err));
	assert_false(graphresp_parse_error(deep, 100000, &ge));
	free(deep);
}

static void test_operation_fields_and_statuses(void **state)
{
	(void)state;
	struct graphresp_operation op;
	char err[256];
	const char *ok = "{\"id\":\"2432b57b-0abd\",\"operationType\":\"createChat\","
	                 "\"createdDateTime\":\"2021-01-11T19:24:17Z\",\"status\":\"succeeded\","
	                 "\"lastActionDateTime\":\"2021-01-11T19:24:19Z\",\"attemptsCount\":1,"
	                 "\"targetResourceId\":\"19:a@unq.gbl.spaces\",\"targetResourceLocation\":"
	                 "\"/chats('19:a@unq.gbl.spaces')\",\"error\":null}";
	assert_true(graphresp_parse_operation(ok, strlen(ok), &op, err, sizeof err));
	assert_int_equal(op.status, GRAPHRESP_OP_SUCCEEDED);
	assert_string_equal(op.status_text, "succeeded");
	assert_string_equal(op.id, "2432b57b-0abd");
	assert_int_equal(op.attempts_count, 1);
	assert_string_equal(op.target_resource_id, "19:a@unq.gbl.spaces");
	assert_string_equal(op.target_resource_location, "/chats('19:a@unq.gbl.spaces')");
	assert_string_equal(op.error_code, "");

	static const struct {
		const char *status;
		enum graphresp_op_status want;
	} st[] = {{"notStarted", GRAPHRESP_OP_NOT_STARTED},
	          {"inProgress", GRAPHRESP_OP_IN_PROGRESS},
	          {"failed", GRAPHRESP_OP_FAILED},
	          {"unknownFutureValue", GRAPHRESP_OP_UNKNOWN},
	          {"Succeeded", GRAPHRESP_OP_UNKNOWN}};
	char body[512];
	for (size_t i = 0; i < sizeof st / sizeof st[0]; i++) {
		snprintf(body, sizeof body, "{\"status\":\"%s\"}", st[i].status);
		assert_true(graphresp_parse_operation(body, strlen(body), &op, err, sizeof err));
		assert_int_equal(op.status, st[i].want);
		assert_string_equal(op.status_text, st[i].status);
		assert_int_equal(op.attempts_count, 0);
	}
	const char *failed = "{\"status\":\"failed\",\"attemptsCount\":3,\"error\":{\"code\":"
	                     "\"BadRequest\",\"message\":\"Member not found\"}}";
	assert_true(graphresp_parse_operation(failed, strlen(failed), &op, err, sizeof err));
	assert_int_equal(op.status, GRAPHRESP_OP_FAILED);
	assert_int_equal(op.attempts_count, 3);
	assert_string_equal(op.error_code, "BadRequest");
	assert_string_equal(op.error_message, "Member not found");
}

static void test_operation_invalid(void **state)
{
	(void)state;
	static const struct {
		const char *body, *err;
	} cases[] = {
	    {"{\"id\":\"x\"}", "status: missing"},
	    {"{\"status\":1}", "status: not a string"},
	    {"{\"status\":\"\"}", "status: empty"},
	    {"{\"status\":\"succeeded\",\"attemptsCount\":\"1\"}", "attemptsCount: not an integer"},
	    {"{\"status\":\"succeeded\",\"attemptsCount\":-1}", "attemptsCount: out of range"},
	    {"{\"status\":\"succeeded\",\"attemptsCount\":1e300}", "attemptsCount: not an integer"},
	    {"{\"status\":\"failed\",\"error\":\"boom\"}", "error: not an object"},
	    {"{\"status\":\"failed\",\"error\":{\"code\":5}}", "error: code and message"},
	    {"{\"status\":\"succeeded\",\"targetResourceId\":[]}",
	     "targetResourceId: not a string"},
	    {"{\"status\":\"succ", "invalid JSON"},
	};
	struct graphresp_operation op;
	char err[256];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_false(graphresp_parse_operation(cases[i].body, strlen(cases[i].body), &op,
		                                       err, sizeof err));
		if (strncmp(err, cases[i].err, strlen(cases[i].err)) != 0)
			fail_msg("case %zu: \"%s\"", i, err);
	}
	/* A long status is kept truncated in status_text and counts as unknown. */
	char *s = repeat('s', 60), body[256];
	snprintf(body, sizeof body, "{\"status\":\"%s\"}", s);
	assert_true(graphresp_parse_operation(body, strlen(body), &op, err, sizeof err));
	assert_int_equal(op.status, GRAPHRESP_OP_UNKNOWN);
	assert_int_equal(strlen(op.status_text), 31);
	free(s);
}

static void test_error_body_needs_a_code_message_optional(void **state)
{
	(void)state;
	struct graphresp_error e;
	const char *body = "{\"error\":{\"code\":\"Forbidden\",\"message\":\"Missing role "
	                   "Chat.Create\",\"innerError\":{\"date\":\"2021-01-11T19:24:17\","
	                   "\"request-id\":\"a1b2c3\",\"client-request-id\":\"d4e5\"}}}";
	assert_true(graphresp_parse_error(body, strlen(body), &e));
	assert_string_equal(e.code, "Forbidden");
	assert_string_equal(e.message, "Missing role Chat.Create");
	assert_string_equal(e.request_id, "a1b2c3");
	const char *bare = "{\"error\":{\"code\":\"TooManyRequests\"}}";
	assert_true(graphresp_parse_error(bare, strlen(bare), &e));
	assert_string_equal(e.message, "");
	assert_string_equal(e.request_id, "");
	static const char *const bad[] = {"",
	                                  "{}",
	                                  "{\"error\":\"x\"}",
	                                  "{\"error\":{}}",
	                                  "{\"error\":{\"code\":1}}",
	                                  "{\"error\":{\"code\":\"\"}}",
	                                  "{\"error\":{\"code\":\"X\",\"message\":{}}}",
	                                  "<html>503</html>",
	                                  "{\"error\":{\"code\":\"X\""};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (graphresp_parse_error(bad[i], strlen(bad[i]), &e))
			fail_msg("accepted %s", bad[i]);
	}
	/* A long message is cut at a character boundary: 254 ASCII + 2-byte characters. */
	char *msg = malloc(2000), *b = malloc(2100);
	assert_non_null(msg);
	assert_non_null(b);
	memset(msg, 'm', 254);
	for (int i = 0; i < 500; i++)
		memcpy(msg + 254 + 2 * i, "\xc3\xa9", 2);
	msg[1254] = '\0';
	snprintf(b, 2100, "{\"error\":{\"code\":\"X\",\"message\":\"%s\"}}", msg);
	assert_true(graphresp_parse_error(b, strlen(b), &e));
	assert_int_equal(strlen(e.message), 510);
	free(msg);
	free(b);
}

#define T1994 784111777000LL /* Sun, 06 Nov 1994 08:49:37 GMT */

static void test_retry_after_seconds_or_date_capped_at_a_day(void **state)
{
	(void)state;
	static const struct {
		const char *v;
		int64_t now, want; /* want -1: refused */
	} cases[] = {
	    {"120", 0, 120000},
	    {"0", 0, 0},
	    {"2.128", 0, 2128},
	    {"2.1", 0, 2100},
	    {"2.1281", 0, 2129},
	    {"2.1280000", 0, 2128},
	    {" 5\t", 0, 5000},
	    {"86400", 0, 86400000},
	    {"86401", 0, 86400000},
	    {"99999999999999999999999999", 0, 86400000},
	    {"31536000", 0, 86400000},
	    {"Sun, 06 Nov 1994 08:49:37 GMT", T1994 - 10000, 10000},
	    {"Sunday, 06-Nov-94 08:49:37 GMT", T1994 - 1500, 1500},
	    {"Sun Nov  6 08:49:37 1994", T1994 - 60000, 60000},
	    {"Sun, 06 Nov 1994 08:49:37 GMT", T1994 + 5000, 0},
	    {"Mon, 06 Nov 1995 08:49:37 GMT", T1994, 86400000},
	    {"Sun Nov  6 08:49:37 1994000123", T1994, 86400000}, /* fuzz: overflowed */
	    {"-1", 0, -1},
	    {"", 0, -1},
	    {"   ", 0, -1},
	    {"abc", 0, -1},
	    {"1e3", 0, -1},
	    {"2.", 0, -1},
	    {".5", 0, -1},
	    {"5s", 0, -1},
	    {"0x10", 0, -1},
	    {"+5", 0, -1},
	    {"5 5", 0, -1},
	    {"Sun, 06 Nov 1994", 0, -1},
	    {"Sun, 06 Nov 1994 08:49:37 GMT; x", 0, -1},
	    {"Sun, 06 Nov 1994 08:49:37 GMT\r\nX: y", 0, -1},
	    {"Foo, 99 Bar 1994 08:49:37 GMT", 0, -1},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		int64_t d = -7;
		bool ok = graphresp_parse_retry_after(cases[i].v, cases[i].now, &d);
		if (ok != (cases[i].want >= 0) || (ok && d != cases[i].want))
			fail_msg("case %zu \"%s\": ok=%d delay=%lld", i, cases[i].v, ok,
			         (long long)d);
	}
	int64_t d;
	assert_false(graphresp_parse_retry_after(NULL, 0, &d));
}

static void test_datetime_offsets_fractions_and_impossible_dates(void **state)
{
	(void)state;
	int64_t ms;
	assert_true(graphresp_parse_datetime("2020-12-04T23:11:16.175Z", &ms));
	assert_int_equal(ms, 1607123476175LL);
	assert_true(graphresp_parse_datetime("2020-12-04T23:11:16.1751234+01:30", &ms));
	assert_int_equal(ms, 1607118076175LL);
	assert_true(graphresp_parse_datetime("2020-12-04T23:10:28.51Z", &ms));
	assert_int_equal(ms, 1607123428510LL);
	assert_true(graphresp_parse_datetime("1994-11-06T08:49:37Z", &ms));
	assert_int_equal(ms, T1994);
	static const char *const bad[] = {"",
	                                  "2020-12-04",
	                                  "2020-13-04T00:00:00Z",
	                                  "2020-02-30T00:00:00Z",
	                                  "2020-12-04T24:00:00Z",
	                                  "2020-12-04T23:11:16",
	                                  "2020-12-04T23:11:16.Z",
	                                  "2020-12-04T23:11:16Zx",
	                                  "2020-12-04 23:11:16Z"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(graphresp_parse_datetime(bad[i], &ms));
}

#define G1              "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca"
#define G3              "3626a173-f2bc-4883-bcf7-01514c3bfb82"
#define MEM(uid, email) "{\"userId\":\"" uid "\",\"email\":" email "}"
#define CHAT(id, topic, created, members)                                                          \
	"{\"id\":\"" id "\",\"topic\":\"" topic                                                    \
	"\",\"chatType\":\"group\",\"createdDateTime\":\"" created "\",\"members\":[" members "]}"

static void test_lookup_matches_members_topic_and_time_first_one_wins(void **state)
{
	(void)state;
	const char *body = "{\"@odata.nextLink\":\"https://graph.microsoft.com/v1.0/users('x')/"
	                   "chats?$skiptoken=a\","
	                   "\"value\":["
	    /* too old */
	    CHAT("19:old@thread.v2", "Welcome, Jane", "2026-11-26T09:00:00Z",
	         MEM(G1, "null") "," MEM("aaaaaaaa-0000-0000-0000-000000000001",
	                                 "\"alex@contoso.com\"") "," MEM(G3, "null")) ","
	    /* an extra member */
	    CHAT("19:extra@thread.v2", "Welcome, Jane", "2026-11-26T10:00:01Z",
	         MEM(G1, "null") "," MEM(
	             "aaaaaaaa-0000-0000-0000-000000000001",
	             "\"alex@contoso."
	             "com\"") "," MEM(G3, "null") "," MEM("bbbbbbbb-0000-0000-0000-000000000001",
	                                                  "null")) ","
	    /* another topic */
	    CHAT("19:topic@thread.v2", "Welcome, Jane!", "2026-11-26T10:00:01Z",
	         MEM(G1, "null") "," MEM("aaaaaaaa-0000-0000-0000-000000000001",
	                                 "\"alex@contoso.com\"") "," MEM(G3, "null")) ","
	    /* the match, members in another order, one known by e-mail, case differs */
	    CHAT("19:ours@thread.v2", "Welcome, Jane", "2026-11-26T10:00:02.5Z",
	         MEM(G3, "null") "," MEM(
	             "aaaaaaaa-0000-0000-0000-000000000001",
	             "\"Alex@Contoso.com\"") "," MEM("8C0A1A67-50CE-4114-BB6C-DA9C5DBCF6CA",
	                                             "null")) ","
	    /* a later duplicate */
	    CHAT("19:later@thread.v2", "Welcome, Jane", "2026-11-26T10:05:00Z",
	         MEM(G3, "null") "," MEM(
	             "aaaaaaaa-0000-0000-0000-000000000001",
	             "\"alex@contoso.com\"") "," MEM(G1, "null")) ","
	                                                          "\"junk\",{\"id\":5}]}";
	const char *ids[] = {G1, "alex@contoso.com", G3};
	struct graphresp_lookup_query q = {.topic = "Welcome, Jane",
	                                   .user_ids = ids,
	                                   .n_user_ids = 3,
	                                   .created_after_ms = 1795687200000LL};
	struct graphresp_lookup_result r;
	char err[256];
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_true(r.found);
	assert_int_equal(r.matches, 2);
	assert_string_equal(r.chat.id, "19:ours@thread.v2");
	assert_int_equal(r.created_ms, 1795687202500LL);
	assert_string_equal(r.next_link,
	                    "https://graph.microsoft.com/v1.0/users('x')/chats?$skiptoken=a");

	const char *none = "{\"value\":[]}";
	assert_true(graphresp_parse_lookup(none, strlen(none), &q, &r, err, sizeof err));
	assert_false(r.found);
	assert_int_equal(r.matches, 0);
	assert_string_equal(r.next_link, "");

	static const char *const bad[] = {
	    "{}", "{\"value\":{}}", "{\"value\":[],\"@odata.nextLink\":1}", "{\"value\":[", "[]"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(
		    graphresp_parse_lookup(bad[i], strlen(bad[i]), &q, &r, err, sizeof err));
	q.topic = NULL;
	assert_false(graphresp_parse_lookup(none, strlen(none), &q, &r, err, sizeof err));
}

/* Graph names members by object id and mail: a UPN that is neither matches by its id. */
static void test_lookup_by_object_id(void **state)
{
	(void)state;
	const char *body = "{\"value\":[" CHAT(
	    "19:ours@thread.v2", "T", "2026-11-26T10:00:02Z",
	    MEM(G1, "\"jane@contoso.com\"") "," MEM(G3, "\"bob@fabrikam.com\"")) "]}";
	const char *ids[] = {"jane.doe@contoso.onmicrosoft.com", "bob@fabrikam.com"};
	const char *oids[] = {"8C0A1A67-50CE-4114-BB6C-DA9C5DBCF6CA", NULL};
	struct graphresp_lookup_query q = {
	    .topic = "T", .user_ids = ids, .n_user_ids = 2, .created_after_ms = 0};
	struct graphresp_lookup_result r;
	char err[256];
	/* Without the object id the UPN matches nothing. */
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_false(r.found);
	q.object_ids = oids;
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_true(r.found);
	assert_string_equal(r.chat.id, "19:ours@thread.v2");
	/* An object id never matches an e-mail, nor stands for another member. */
	oids[0] = "jane@contoso.com";
	const char *other[] = {"jane.doe@contoso.onmicrosoft.com", G3};
	q.user_ids = other;
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_false(r.found);
}

/* Appends members u<from>..u<to-1>@contoso.com (and one outsider when asked) to buf. */
static void append_members(char *buf, size_t cap, int from, int to, bool outsider)
{
	for (int i = from; i < to; i++)
		snprintf(buf + strlen(buf), cap - strlen(buf),
		         "%s{\"userId\":\"%08d-0000-0000-0000-000000000000\","
		         "\"email\":\"%s%d@contoso.com\"}",
		         i > from ? "," : "", i, outsider && i == to - 1 ? "x" : "u", i);
}

static void append_chat(char *buf, size_t cap, const char *id, int listed, bool outsider)
{
	snprintf(buf + strlen(buf), cap - strlen(buf),
	         "%s{\"id\":\"%s\",\"topic\":\"Big\",\"chatType\":\"group\","
	         "\"createdDateTime\":\"2026-11-26T10:00:02Z\",\"members\":[",
	         buf[strlen(buf) - 1] == '[' ? "" : ",", id);
	append_members(buf, cap, 0, listed, outsider);
	snprintf(buf + strlen(buf), cap - strlen(buf), "]}");
}

/*
 * A chat list names at most 25 members of a chat (Graph's known issue): a chat of a 30-member
 * request lists 25 and can only be a candidate, settled by its full member list.
 */
static void test_lookup_of_more_than_25_members_gives_candidates(void **state)
{
	(void)state;
	char names[30][24], body[16384] = "{\"value\":[", members[8192] = "{\"value\":[";
	const char *ids[30];
	for (int i = 0; i < 30; i++) {
		snprintf(names[i], sizeof names[i], "u%d@contoso.com", i);
		ids[i] = names[i];
	}
	append_chat(body, sizeof body, "19:capped@thread.v2", 25, false);
	append_chat(body, sizeof body, "19:outsider@thread.v2", 25, true);
	append_chat(body, sizeof body, "19:short@thread.v2", 24, false);
	snprintf(body + strlen(body), sizeof body - strlen(body), "]}");
	struct graphresp_lookup_query q = {.topic = "Big", .user_ids = ids, .n_user_ids = 30};
	struct graphresp_lookup_result r;
	char err[256];
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_false(r.found);
	assert_int_equal(r.n_candidates, 1);
	assert_string_equal(r.candidates[0].id, "19:capped@thread.v2");
	assert_int_equal(r.candidate_created_ms[0], 1795687202000LL);
	/* A query of 25 is matched by a list of 25 outright. */
	q.n_user_ids = 25;
	assert_true(graphresp_parse_lookup(body, strlen(body), &q, &r, err, sizeof err));
	assert_true(r.found);
	assert_int_equal(r.n_candidates, 0);
	assert_string_equal(r.chat.id, "19:capped@thread.v2");

	/* The full list decides: exactly the 30, not 29, not 30 with an outsider. */
	bool match = true;
	q.n_user_ids = 30;
	append_members(members, sizeof members, 0, 30, false);
	snprintf(members + strlen(members), sizeof members - strlen(members), "]}");
	assert_true(graphresp_parse_members(members, strlen(members), &q, &match, err, sizeof err));
	assert_true(match);
	q.n_user_ids = 29;
	assert_true(graphresp_parse_members(members, strlen(members), &q, &match, err, sizeof err));
	assert_false(match);
	q.n_user_ids = 30;
	snprintf(members, sizeof members, "{\"value\":[");
	append_members(members, sizeof members, 0, 30, true);
	snprintf(members + strlen(members), sizeof members - strlen(members), "]}");
	assert_true(graphresp_parse_members(members, strlen(members), &q, &match, err, sizeof err));
	assert_false(match);
	static const char *const bad[] = {"{}", "{\"value\":{}}", "[]", "{\"value\":["};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_false(
		    graphresp_parse_members(bad[i], strlen(bad[i]), &q, &match, err, sizeof err));
}

static void test_user_id_must_be_a_guid(void **state)
{
	(void)state;
	struct graphresp_user u;
	char err[256];
	const char *ok = "{\"@odata.context\":\"https://graph.microsoft.com/v1.0/$metadata#users"
	                 "(id)/$entity\",\"id\":\"8C0A1A67-50CE-4114-BB6C-DA9C5DBCF6CA\"}";
	assert_true(graphresp_parse_user(ok, strlen(ok), &u, err, sizeof err));
	assert_string_equal(u.id, G1);
	static const char *const bad[] = {
	    "{}",
	    "{\"id\":null}",
	    "{\"id\":5}",
	    "{\"id\":\"\"}",
	    "{\"id\":\"jane@contoso.com\"}",
	    "{\"id\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6c\"}",
	    "{\"id\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6caa\"}",
	    "{\"id\":\"8c0a1a67x50ce-4114-bb6c-da9c5dbcf6ca\"}",
	    "{\"id\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6cg\"}",
	    "{\"id\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"",
	    "[\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"]",
	    "",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		assert_false(graphresp_parse_user(bad[i], strlen(bad[i]), &u, err, sizeof err));
		assert_string_equal(u.id, "");
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_chat_valid),
	    cmocka_unit_test(test_chat_invalid),
	    cmocka_unit_test(test_oversized_and_deep),
	    cmocka_unit_test(test_operation_fields_and_statuses),
	    cmocka_unit_test(test_operation_invalid),
	    cmocka_unit_test(test_error_body_needs_a_code_message_optional),
	    cmocka_unit_test(test_retry_after_seconds_or_date_capped_at_a_day),
	    cmocka_unit_test(test_datetime_offsets_fractions_and_impossible_dates),
	    cmocka_unit_test(test_lookup_matches_members_topic_and_time_first_one_wins),
	    cmocka_unit_test(test_lookup_by_object_id),
	    cmocka_unit_test(test_lookup_of_more_than_25_members_gives_candidates),
	    cmocka_unit_test(test_user_id_must_be_a_guid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
