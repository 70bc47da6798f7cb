/*
 * test_event.c - chatprov.request.v1 decoder: every rule and every rejection reason.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "event.h"

#define G1         "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca"
#define G2         "82af01c5-f7cc-4a2e-a728-3a5df21afd9d"
#define G3         "3626a173-f2bc-4883-bcf7-01514c3bfb82"
#define T1         "4dc1fe35-8ac6-4f0d-904a-7ebcd364bea1"
#define APP        "05F59CEC-A742-4A50-A62E-202A57E478A4"
#define M2         "[{\"userId\":\"" G1 "\"},{\"userId\":\"" G2 "\"}]"
#define ONE(extra) "{\"id\":\"e1\",\"chatType\":\"oneOnOne\",\"members\":" M2 extra "}"
#define GROUP(members, extra)                                                                      \
	"{\"id\":\"e1\",\"chatType\":\"group\",\"topic\":\"T\",\"members\":" members extra "}"
#define USER(u)                                                                                    \
	"{\"id\":\"e1\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":" u                     \
	"},{\"userId\":\"" G2 "\"}]}"

static struct event_limits small_limits(void)
{
	struct event_limits l = event_limits_default();
	l.max_members = 3;
	l.max_topic_length = 10;
	return l;
}

static bool decode(const char *json, size_t len, struct event_request **ev, char *reason)
{
	struct event_limits l = small_limits();
	return event_decode(json, len, &l, ev, reason, EVENT_REASON_SIZE);
}

/* The design document's example decodes field for field. */
static void test_design_example(void **state)
{
	(void)state;
	const char *json =
	    "{\"id\":\"hr-2026-000123\",\"tenant\":\"contoso\",\"chatType\":\"group\","
	    "\"topic\":\"Welcome, Jane\",\"members\":["
	    "{\"userId\":\"" G1 "\",\"roles\":[\"owner\"]},{\"userId\":\"alex@contoso.com\"},"
	    "{\"userId\":\"" G3 "\",\"roles\":[\"guest\"]},"
	    "{\"userId\":\"" G2 "\",\"tenantId\":\"" T1 "\"}],"
	    "\"installedApps\":[\"" APP "\"],\"unknown\":{\"x\":[1,2]}}";
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	struct event_limits l = event_limits_default();
	assert_true(event_decode(json, strlen(json), &l, &ev, reason, sizeof reason));
	assert_string_equal(ev->id, "hr-2026-000123");
	assert_string_equal(ev->tenant, "contoso");
	assert_int_equal(ev->chat_type, EVENT_CHAT_GROUP);
	assert_string_equal(ev->topic, "Welcome, Jane");
	assert_int_equal(ev->n_members, 4);
	assert_string_equal(ev->members[0].user_id, G1);
	assert_false(ev->members[0].guest);
	assert_string_equal(ev->members[1].user_id, "alex@contoso.com");
	assert_null(ev->members[1].tenant_id);
	assert_true(ev->members[2].guest);
	assert_string_equal(ev->members[3].tenant_id, T1);
	assert_string_equal(ev->app_id, APP);
	event_free(ev);
}

static void test_minimal_defaults(void **state)
{
	(void)state;
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	const char *json = ONE(",\"topic\":null,\"tenant\":null,\"installedApps\":[]");
	assert_true(decode(json, strlen(json), &ev, reason));
	assert_null(ev->tenant);
	assert_null(ev->topic);
	assert_null(ev->app_id);
	assert_int_equal(ev->chat_type, EVENT_CHAT_ONE_ON_ONE);
	event_free(ev);
}

struct reject_case {
	const char *json;
	const char *reason; /* exact, or a prefix when it ends in '*' */
};

static const struct reject_case rejects[] = {
    {"[]", "message: not a JSON object"},
    {"\"id\"", "message: not a JSON object"},
    {"{\"id\": }", "invalid JSON at offset 7: *"},
    {"{\"id\":\"a\"", "invalid JSON at offset 9: unexpected end of input"},
    {"{\"id\":\"a\"} x", "invalid JSON at offset 11: *"},
    {"{\"id\":\"a\",}", "invalid JSON at offset *"},
    {"{'id':'a'}", "invalid JSON at offset *"},
    {"{\"id\":\"\xff\"}", "invalid JSON at offset *"},
    /* json-c lets overlong forms through; the field check does not. */
    {"{\"id\":\"\xc0\xaf\"}", "id: contains a control character or invalid UTF-8"},
    {"{\"chatType\":\"oneOnOne\",\"members\":" M2 "}", "id: missing"},
    {"{\"id\":7,\"chatType\":\"oneOnOne\",\"members\":" M2 "}", "id: must be a string"},
    {"{\"id\":null,\"chatType\":\"oneOnOne\",\"members\":" M2 "}", "id: must be a string"},
    {"{\"id\":\"\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}", "id: empty"},
    {"{\"id\":\"a\\nb\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "id: contains a control character or invalid UTF-8"},
    {"{\"id\":\"a\\u0000b\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "id: contains a NUL character"},
    {"{\"id\":\"a\\u0085\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "id: contains a control character or invalid UTF-8"},
    {"{\"id\":\"e\",\"tenant\":\"\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "tenant: must be 1..63 characters of A-Z a-z 0-9 _ . -"},
    {"{\"id\":\"e\",\"tenant\":\"a b\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "tenant: must be 1..63 characters of A-Z a-z 0-9 _ . -"},
    {"{\"id\":\"e\",\"tenant\":"
     "\"0123456789012345678901234567890123456789012345678901234567890123\","
     "\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "tenant: must be 1..63 characters of A-Z a-z 0-9 _ . -"},
    {"{\"id\":\"e\",\"tenant\":[],\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
     "tenant: must be a string"},
    {"{\"id\":\"e\",\"members\":" M2 "}", "chatType: missing"},
    {"{\"id\":\"e\",\"chatType\":\"Group\",\"members\":" M2 "}",
     "chatType: must be \"oneOnOne\" or \"group\""},
    {"{\"id\":\"e\",\"chatType\":1,\"members\":" M2 "}", "chatType: must be a string"},
    {ONE(",\"topic\":\"x\""), "topic: only allowed on group chats"},
    {GROUP(M2, ",\"topic\":\"\""), "topic: empty"},
    {GROUP(M2, ",\"topic\":5"), "topic: must be a string"},
    {GROUP(M2, ",\"topic\":\"a\\u0007b\""), "topic: contains a control character or invalid UTF-8"},
    {GROUP(M2, ",\"topic\":\"01234567890\""), "topic: 11 characters exceeds max_topic_length 10"},
    {GROUP(M2, ",\"topic\":\"\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89"
               "\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89"
               "\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\""),
     "topic: 11 characters exceeds max_topic_length 10"},
    {"{\"id\":\"e\",\"chatType\":\"oneOnOne\"}", "members: missing"},
    {"{\"id\":\"e\",\"chatType\":\"oneOnOne\",\"members\":{}}", "members: must be an array"},
    {"{\"id\":\"e\",\"chatType\":\"oneOnOne\",\"members\":[]}", "members: empty"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[1,2,3,4]}",
     "members: 4 members exceeds max_members 3"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"" G1 "\"},\"x\"]}",
     "members[1]: must be an object"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"" G1 "\"},{}]}",
     "members[1].userId: missing"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"" G1 "\"},{\"userId\":1}]}",
     "members[1].userId: must be a string"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"" G1 "\"},"
     "{\"userId\":\"" G2 "\"},{\"userId\":\"8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g\"}]}",
     "members[2].userId: not a GUID or user principal name"},
    {USER("\"a\\\"b@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"a(b)@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"a/b@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"a%27b@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"a\\r\\nb@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"../a@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"a b@contoso.com\""), "members[0].userId: not a GUID or user principal name"},
    {USER("\"j\xc3\xa9r\xc3\xb4me@contoso.com\""),
     "members[0].userId: not a GUID or user principal name"},
    {USER("\"a@b\\u0000c.com\""), "members[0].userId: contains a NUL character"},
    {USER("\"" G1 "\",\"roles\":\"owner\""), "members[0].roles: must be an array"},
    {USER("\"" G1 "\",\"roles\":[\"admin\"]"),
     "members[0].roles: must be [\"owner\"] or [\"guest\"]"},
    {USER("\"" G1 "\",\"roles\":[]"), "members[0].roles: must be [\"owner\"] or [\"guest\"]"},
    {USER("\"" G1 "\",\"roles\":[\"owner\",\"guest\"]"),
     "members[0].roles: must be [\"owner\"] or [\"guest\"]"},
    {USER("\"" G1 "\",\"roles\":[1]"), "members[0].roles: must be [\"owner\"] or [\"guest\"]"},
    {USER("\"" G1 "\",\"tenantId\":\"contoso\""), "members[0].tenantId: not a GUID"},
    {USER("\"" G1 "\",\"tenantId\":1"), "members[0].tenantId: must be a string"},
    {"{\"id\":\"e\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"" G1 "\"},"
     "{\"userId\":\"" G2 "\"},{\"userId\":\"" G3 "\"}]}",
     "members: a oneOnOne chat needs exactly 2 members, got 3"},
    {"{\"id\":\"e\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"" G1 "\"}]}",
     "members: a oneOnOne chat needs exactly 2 members, got 1"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"" G1 "\"}]}",
     "members: a group chat needs at least 2 members, got 1"},
    {"{\"id\":\"e\",\"chatType\":\"group\",\"members\":[{\"userId\":\"A@contoso.com\"},"
     "{\"userId\":\"" G2 "\"},{\"userId\":\"a@CONTOSO.com\"}]}",
     "members[2].userId: duplicate of members[0]"},
    {ONE(",\"installedApps\":\"" APP "\""), "installedApps: must be an array"},
    {ONE(",\"installedApps\":[\"" APP "\",\"" APP "\"]"), "installedApps: at most one app, got 2"},
    {ONE(",\"installedApps\":[{\"id\":\"" APP "\"}]"), "installedApps[0]: must be a string"},
    {ONE(",\"installedApps\":[\"05F59CEC-A742-4A50-A62E-202A57E478A\"]"),
     "installedApps[0]: not a GUID"},
};

static void test_rejections(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof rejects / sizeof rejects[0]; i++) {
		const struct reject_case *c = &rejects[i];
		struct event_request *ev = (void *)1;
		char reason[EVENT_REASON_SIZE];
		bool ok = decode(c->json, strlen(c->json), &ev, reason);
		if (ok)
			fail_msg("case %zu accepted: %s", i, c->json);
		assert_null(ev);
		size_t n = strlen(c->reason);
		bool prefix = n > 0 && c->reason[n - 1] == '*';
		if (prefix ? strncmp(reason, c->reason, n - 1) != 0
		           : strcmp(reason, c->reason) != 0)
			fail_msg("case %zu: reason \"%s\", want \"%s\"", i, reason, c->reason);
	}
}

static void expect_reason(const char *buf, size_t len, const struct event_limits *l,
                          const char *want)
{
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	assert_false(event_decode(buf, len, l, &ev, reason, sizeof reason));
	assert_string_equal(reason, want);
}

static void test_raw_bytes(void **state)
{
	(void)state;
	struct event_limits l = event_limits_default();
	expect_reason("", 0, &l, "message: empty");
	expect_reason("{\"id\":\"a\0\"}", 11, &l, "message: NUL byte at offset 8");
	l.max_message_bytes = 20;
	const char *big = ONE("");
	char want[128];
	snprintf(want, sizeof want, "message: %zu bytes exceeds max_message_bytes 20", strlen(big));
	expect_reason(big, strlen(big), &l, want);
	/* The limit is checked before parsing: garbage over the limit gets the size reason. */
	expect_reason("xxxxxxxxxxxxxxxxxxxxxxxxx", 25, &l,
	              "message: 25 bytes exceeds max_message_bytes 20");
}

static void test_deep_nesting(void **state)
{
	(void)state;
	size_t n = 100000;
	char *buf = malloc(n + 16);
	assert_non_null(buf);
	memcpy(buf, "{\"x\":", 5);
	memset(buf + 5, '[', n);
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	struct event_limits l = event_limits_default();
	assert_false(event_decode(buf, n + 5, &l, &ev, reason, sizeof reason));
	assert_non_null(strstr(reason, "invalid JSON at offset"));
	assert_non_null(strstr(reason, "nesting"));
	free(buf);
}

static void test_limits_boundaries(void **state)
{
	(void)state;
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	/* 10 code points of 4 bytes each: the limit counts characters, not bytes. */
	const char *emoji =
	    GROUP(M2, ",\"topic\":\"\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89"
	              "\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89"
	              "\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\"");
	assert_true(decode(emoji, strlen(emoji), &ev, reason));
	assert_int_equal(strlen(ev->topic), 40);
	event_free(ev);
	/* json-c turns a lone surrogate escape into U+FFFD: still valid UTF-8 downstream. */
	const char *lone = GROUP(M2, ",\"topic\":\"\\ud800\"");
	assert_true(decode(lone, strlen(lone), &ev, reason));
	assert_string_equal(ev->topic, "\xef\xbf\xbd");
	event_free(ev);
	/* id: exactly 200 characters (multi-byte ones count once) passes, 201 does not. */
	char json[1024], id[700] = "";
	for (int i = 0; i < 200; i++)
		strcat(id, i % 2 ? "\xc3\xa9" : "a");
	snprintf(json, sizeof json, "{\"id\":\"%s\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
	         id);
	assert_true(decode(json, strlen(json), &ev, reason));
	event_free(ev);
	snprintf(json, sizeof json, "{\"id\":\"%sb\",\"chatType\":\"oneOnOne\",\"members\":" M2 "}",
	         id);
	assert_false(decode(json, strlen(json), &ev, reason));
	assert_string_equal(reason, "id: 201 characters exceeds 200");
	/* max_members = 3 members pass. */
	const char *three = GROUP("[{\"userId\":\"" G1 "\"},{\"userId\":\"" G2
	                          "\"},{\"userId\":\"" G3 "\",\"roles\":null}]",
	                          "");
	assert_true(decode(three, strlen(three), &ev, reason));
	assert_int_equal(ev->n_members, 3);
	event_free(ev);
}

static void test_guid_rule(void **state)
{
	(void)state;
	assert_true(event_is_guid(G1));
	assert_true(event_is_guid(APP));
	assert_false(event_is_guid("8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g"));
	assert_false(event_is_guid("8c0a1a6750ce4114bb6cda9c5dbcf6ca"));
	assert_false(event_is_guid("{8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca}"));
	assert_false(event_is_guid("8c0a1a67-50ce-4114-bb6c-da9c5dbcf6c"));
	assert_false(event_is_guid("8c0a1a67-50ce-4114-bb6cxda9c5dbcf6ca"));
	assert_false(event_is_guid(""));
}

static void test_upn_rule(void **state)
{
	(void)state;
	static const char *const good[] = {
	    "alex@contoso.com", "o'brien@contoso.com", "a.b-c_d!e#f^g~h@sub.contoso.co.uk",
	    "jane_fabrikam.com#EXT#@contoso.onmicrosoft.com", "x@a-b.io"};
	static const char *const bad[] = {"alex",
	                                  "@contoso.com",
	                                  "alex@",
	                                  "alex@contoso",
	                                  "a@@contoso.com",
	                                  "a@b@contoso.com",
	                                  ".a@contoso.com",
	                                  "a.@contoso.com",
	                                  "a..b@contoso.com",
	                                  "a@-contoso.com",
	                                  "a@contoso-.com",
	                                  "a@contoso..com",
	                                  "a@.contoso.com",
	                                  "a@contoso.com.",
	                                  "a b@contoso.com",
	                                  "a\"b@contoso.com",
	                                  "a(b@contoso.com",
	                                  "a/b@contoso.com",
	                                  "a\\b@contoso.com",
	                                  "a%b@contoso.com",
	                                  "a\rb@contoso.com",
	                                  "a@contoso.com/../x",
	                                  "a@con_toso.com",
	                                  "\xc3\xa9@contoso.com",
	                                  "a@xn--\xc3\xa9.com"};
	for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
		if (!event_is_upn(good[i]))
			fail_msg("rejected %s", good[i]);
	}
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		if (event_is_upn(bad[i]))
			fail_msg("accepted %s", bad[i]);
	}
	/* 64 before the @ and 48 after are the limits. */
	char upn[200];
	memset(upn, 'a', 64);
	strcpy(upn + 64, "@contoso.com");
	assert_true(event_is_upn(upn));
	memset(upn, 'a', 65);
	strcpy(upn + 65, "@contoso.com");
	assert_false(event_is_upn(upn));
	memset(upn, 'b', 44);
	upn[0] = 'x', upn[1] = '@';
	strcpy(upn + 44, ".com"); /* domain of 46 */
	assert_true(event_is_upn(upn));
	memset(upn + 2, 'b', 46);
	strcpy(upn + 48, ".com"); /* domain of 50 */
	assert_false(event_is_upn(upn));
}

static void test_peek_id(void **state)
{
	(void)state;
	char id[EVENT_ID_MAX_CHARS * 4 + 1];
	const char *bad_members =
	    "{\"members\":{\"id\":\"inner\"}, \"id\" : \"hr-1\", \"chatType\":7}";
	assert_true(event_peek_id(bad_members, strlen(bad_members), id, sizeof id));
	assert_string_equal(id, "hr-1");
	const char *truncated = "{\"id\":\"hr-2\",\"chatType\":\"group\",\"members\":[";
	assert_true(event_peek_id(truncated, strlen(truncated), id, sizeof id));
	assert_string_equal(id, "hr-2");
	const char *key_in_string = "{\"x\":\"\\\"id\\\":\\\"no\\\"\",\"id\":\"yes\"}";
	assert_true(event_peek_id(key_in_string, strlen(key_in_string), id, sizeof id));
	assert_string_equal(id, "yes");
	const char *fails[] = {"",
	                       "[\"id\",\"x\"]",
	                       "{\"id\":5}",
	                       "{\"id\":\"a\\nb\"}",
	                       "{\"id\":\"\"}",
	                       "{\"id\":\"a\x01\"}",
	                       "{\"id\":\"abc",
	                       "{\"x\":{\"id\":\"n\"}}"};
	for (size_t i = 0; i < sizeof fails / sizeof fails[0]; i++) {
		if (event_peek_id(fails[i], strlen(fails[i]), id, sizeof id))
			fail_msg("peeked \"%s\" from case %zu", id, i);
	}
	/* Too small a buffer: no truncated id. */
	assert_false(event_peek_id("{\"id\":\"abcdef\"}", 15, id, 4));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_design_example), cmocka_unit_test(test_minimal_defaults),
	    cmocka_unit_test(test_rejections),     cmocka_unit_test(test_raw_bytes),
	    cmocka_unit_test(test_deep_nesting),   cmocka_unit_test(test_limits_boundaries),
	    cmocka_unit_test(test_guid_rule),      cmocka_unit_test(test_upn_rule),
	    cmocka_unit_test(test_peek_id),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
