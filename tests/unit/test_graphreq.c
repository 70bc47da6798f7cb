/*
 * test_graphreq.c - Graph request builder: Microsoft's six documented bodies, escaping,
 * client-request-id, Location resolution and the lookup URL.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "event.h"
#include "graphreq.h"

#define ROOT     "https://graph.microsoft.com/beta"
#define AAD      "\"@odata.type\":\"#microsoft.graph.aadUserConversationMember\""
#define OWNER(u) "{" AAD ",\"roles\":[\"owner\"],\"user@odata.bind\":\"" ROOT "/users('" u "')\"}"
#define GUEST(u) "{" AAD ",\"roles\":[\"guest\"],\"user@odata.bind\":\"" ROOT "/users('" u "')\"}"

/* Request bodies of Microsoft's create-chat examples 1-6, as documented. */
static const char *const doc_body[] = {
    "{\"chatType\":\"oneOnOne\",\"members\":[" OWNER(
        "8b081ef6-4792-4def-b2c9-c363a1bf41d5") "," OWNER("82af01c5-f7cc-4a2e-a728-"
                                                          "3a5df21afd9d") "]}",
    "{\"chatType\":\"group\",\"topic\":\"Group chat title\",\"members\":[" OWNER(
        "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca") "," OWNER("82fe7758-5bb3-4f0d-a43f-"
                                                          "e555fd399c6f") "," OWNER("3626a173-"
                                                                                    "f2bc-4883-"
                                                                                    "bcf7-"
                                                                                    "01514c3bfb"
                                                                                    "82") "]}",
    "{\"chatType\":\"oneOnOne\",\"members\":[" OWNER(
        "8b081ef6-4792-4def-b2c9-c363a1bf41d5") "," OWNER("82af01c5-f7cc-4a2e-a728-"
                                                          "3a5df21afd9d") "],\"installedApps\":"
                                                                          "[{\"teamsApp@odata."
                                                                          "bind\":"
                                                                          "\"" ROOT "/appCatalogs/"
                                                                          "teamsApps/"
                                                                          "05F59CEC-A742-4A50-"
                                                                          "A62E-202A57E478A4\"}"
                                                                          "]}",
    "{\"chatType\":\"oneOnOne\",\"members\":[" OWNER("jacob@contoso.com") "," OWNER(
        "alex@contoso.com") "]}",
    "{\"chatType\":\"group\",\"topic\":\"Group chat title\",\"members\":[" OWNER(
        "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca") "," OWNER("82fe7758-5bb3-4f0d-a43f-"
                                                          "e555fd399c6f") "," GUEST("8ba98gf6-"
                                                                                    "7fc2-4eb2-"
                                                                                    "c7f2-"
                                                                                    "aef9f21fd9"
                                                                                    "8g") "]}",
    "{\"chatType\":\"oneOnOne\",\"members\":[" OWNER(
        "8b081ef6-4792-4def-b2c9-c363a1bf41d5") ",{" AAD ",\"roles\":[\"owner\"],\"user@odata."
                                                "bind\":\"" ROOT "/users('82af01c5-f7cc-4a2e-"
                                                "a728-3a5df21afd9d')\",\"tenantId\":\"4dc1fe35-"
                                                "8ac6-4f0d-904a-7ebcd364bea1\"}]}",
};

/* The same six requests as chatprov.request.v1 events. */
static const char *const doc_event[] = {
    "{\"id\":\"ex1\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"8b081ef6-4792-4def-b2c9-"
    "c363a1bf41d5\"},{\"userId\":\"82af01c5-f7cc-4a2e-a728-3a5df21afd9d\"}]}",
    "{\"id\":\"ex2\",\"chatType\":\"group\",\"topic\":\"Group chat "
    "title\",\"members\":[{\"userId\":"
    "\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},{\"userId\":\"82fe7758-5bb3-4f0d-a43f-"
    "e555fd399c6f\"},"
    "{\"userId\":\"3626a173-f2bc-4883-bcf7-01514c3bfb82\",\"roles\":[\"owner\"]}]}",
    "{\"id\":\"ex3\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"8b081ef6-4792-4def-b2c9-"
    "c363a1bf41d5\"},{\"userId\":\"82af01c5-f7cc-4a2e-a728-3a5df21afd9d\"}],\"installedApps\":["
    "\"05F59CEC-A742-4A50-A62E-202A57E478A4\"]}",
    "{\"id\":\"ex4\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"jacob@contoso.com\"},"
    "{\"userId\":\"alex@contoso.com\"}]}",
    "{\"id\":\"ex5\",\"chatType\":\"group\",\"topic\":\"Group chat "
    "title\",\"members\":[{\"userId\":"
    "\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},{\"userId\":\"82fe7758-5bb3-4f0d-a43f-"
    "e555fd399c6f\"},"
    "{\"userId\":\"8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g\",\"roles\":[\"guest\"]}]}",
    "{\"id\":\"ex6\",\"chatType\":\"oneOnOne\",\"members\":[{\"userId\":\"8b081ef6-4792-4def-b2c9-"
    "c363a1bf41d5\"},{\"userId\":\"82af01c5-f7cc-4a2e-a728-3a5df21afd9d\",\"tenantId\":\"4dc1fe35-"
    "8ac6-4f0d-904a-7ebcd364bea1\"}]}",
};

#define BAD_GUEST  "8ba98gf6-7fc2-4eb2-c7f2-aef9f21fd98g"
#define GOOD_GUEST "8ba98af6-7fc2-4eb2-a7f2-aef9f21fd98a"

static char *replace(const char *s, const char *from, const char *to)
{
	const char *at = strstr(s, from);
	assert_non_null(at);
	size_t n = strlen(s) - strlen(from) + strlen(to) + 1;
	char *r = malloc(n);
	assert_non_null(r);
	snprintf(r, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
	return r;
}

/* Decodes an event, builds its body, and compares it as JSON with the documented one. */
static void expect_body(const char *event_json, const char *want_json)
{
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	struct event_limits l = event_limits_default();
	if (!event_decode(event_json, strlen(event_json), &l, &ev, reason, sizeof reason))
		fail_msg("rejected: %s", reason);
	char *body = graphreq_chat_body(ev, ROOT);
	assert_non_null(body);
	json_object *got = json_tokener_parse(body), *want = json_tokener_parse(want_json);
	assert_non_null(got);
	assert_non_null(want);
	if (!json_object_equal(got, want))
		fail_msg("body %s\nwant %s", body, want_json);
	/* Plain text: no escaped slashes, so the URLs read as Microsoft writes them. */
	assert_null(strstr(body, "\\/"));
	json_object_put(got);
	json_object_put(want);
	free(body);
	event_free(ev);
}

static void test_documented_bodies(void **state)
{
	(void)state;
	for (size_t i = 0; i < 6; i++) {
		if (i == 4)
			continue;
		expect_body(doc_event[i], doc_body[i]);
	}
}

/* Example 5's guest id has a 'g': rejected; with a valid id the body is the documented one. */
static void test_example5_guest(void **state)
{
	(void)state;
	struct event_request *ev;
	char reason[EVENT_REASON_SIZE];
	struct event_limits l = event_limits_default();
	assert_false(
	    event_decode(doc_event[4], strlen(doc_event[4]), &l, &ev, reason, sizeof reason));
	assert_string_equal(reason, "members[2].userId: not a GUID or user principal name");
	char *event = replace(doc_event[4], BAD_GUEST, GOOD_GUEST);
	char *body = replace(doc_body[4], BAD_GUEST, GOOD_GUEST);
	expect_body(event, body);
	free(event);
	free(body);
}

/* JSON escaping of values placed in the body (topic with quotes, backslash, unicode). */
static void test_body_json_escaping(void **state)
{
	(void)state;
	struct event_member m[2] = {
	    {.user_id = "o'brien@contoso.com"},
	    {.user_id = "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca", .guest = true}};
	struct event_request ev = {.id = "x",
	                           .chat_type = EVENT_CHAT_GROUP,
	                           .topic = "say \"hi\" \\ </script> \xc3\xa9",
	                           .n_members = 2,
	                           .members = m};
	char *body = graphreq_chat_body(&ev, ROOT "/");
	assert_non_null(body);
	json_object *o = json_tokener_parse(body), *v;
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "topic", &v));
	assert_string_equal(json_object_get_string(v), ev.topic);
	json_object *mem = json_object_array_get_idx(json_object_object_get(o, "members"), 0);
	assert_string_equal(json_object_get_string(json_object_object_get(mem, "user@odata.bind")),
	                    ROOT "/users('o''brien@contoso.com')");
	json_object_put(o);
	free(body);
	/* oneOnOne never carries a topic, even if a caller left one set. */
	ev.chat_type = EVENT_CHAT_ONE_ON_ONE;
	body = graphreq_chat_body(&ev, ROOT);
	assert_non_null(body);
	assert_null(strstr(body, "topic"));
	free(body);
	assert_null(graphreq_chat_body(&ev, ""));
}

static int unhex(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The bind URL property: root + "/users('" + X + "')", X safe, quotes paired, X decodes back. */
static void check_bind_property(const char *root, const char *user_id, const char *url)
{
	size_t rl = strlen(root), ul = strlen(url);
	assert_true(strncmp(url, root, rl) == 0);
	assert_true(strncmp(url + rl, "/users('", 8) == 0);
	assert_true(ul >= rl + 10 && strcmp(url + ul - 2, "')") == 0);
	const char *x = url + rl + 8, *end = url + ul - 2;
	char decoded[4096];
	size_t n = 0;
	for (const char *p = x; p < end; p++) {
		if (*p == '\'') {
			assert_true(p + 1 < end && p[1] == '\'');
			decoded[n++] = '\'';
			p++;
		} else if (*p == '%') {
			assert_true(p + 2 < end && unhex(p[1]) >= 0 && unhex(p[2]) >= 0);
			decoded[n++] = (char)(unhex(p[1]) * 16 + unhex(p[2]));
			p += 2;
		} else {
			assert_non_null(
			    strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
			           "0123456789-._~@",
			           *p));
			decoded[n++] = *p;
		}
	}
	decoded[n] = '\0';
	assert_string_equal(decoded, user_id);
}

static void test_bind_url_escaping(void **state)
{
	(void)state;
	static const struct {
		const char *id, *x;
	} cases[] = {
	    {"8b081ef6-4792-4def-b2c9-c363a1bf41d5", "8b081ef6-4792-4def-b2c9-c363a1bf41d5"},
	    {"jacob@contoso.com", "jacob@contoso.com"},
	    {"o'brien@contoso.com", "o''brien@contoso.com"},
	    {"a')/../../chats?x=1#", "a''%29%2F..%2F..%2Fchats%3Fx%3D1%23"},
	    {"\"q\"(p)", "%22q%22%28p%29"},
	    {"100%", "100%25"},
	    {"a\r\nHost: evil", "a%0D%0AHost%3A%20evil"},
	    {"j\xc3\xa9r\xc3\xb4me", "j%C3%A9r%C3%B4me"},
	    {"a\\b+c", "a%5Cb%2Bc"},
	    {"''", "''''"},
	};
	char url[1024], want[1024];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		assert_true(graphreq_user_bind_url(ROOT, cases[i].id, url, sizeof url));
		snprintf(want, sizeof want, ROOT "/users('%s')", cases[i].x);
		assert_string_equal(url, want);
		check_bind_property(ROOT, cases[i].id, url);
	}
	assert_false(graphreq_user_bind_url(ROOT, "", url, sizeof url));
	assert_false(graphreq_user_bind_url("", "a", url, sizeof url));
	/* Exactly fitting and one byte short. */
	size_t need = strlen(ROOT "/users('ab')") + 1;
	assert_true(graphreq_user_bind_url(ROOT, "ab", url, need));
	assert_false(graphreq_user_bind_url(ROOT, "ab", url, need - 1));
}

/* Expected values computed with Python: uuid.uuid5(uuid.UUID(NS), name). */
static void test_client_request_id(void **state)
{
	(void)state;
	static const struct {
		const char *name, *uuid;
	} v[] = {
	    {"hr-2026-000123", "abaa1329-b418-5b70-9af6-9c5c44f701fb"},
	    {"a", "f1822b70-cb8b-56d0-8edc-e717fc382c74"},
	    {"", "c91de75b-a24c-5b4f-90bf-dbed581cc80c"},
	    {"\xc3\x9c"
	     "n\xc3\xaf"
	     "code-\xe2\x9c\x93",
	     "0d8d9590-c1e6-56ec-bdca-b86cbca44194"},
	    {"o'brien", "36a6c5ec-9de4-58dc-b6a6-196f1c8256be"},
	};
	char out[37];
	for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
		assert_true(graphreq_client_request_id(v[i].name, out));
		assert_string_equal(out, v[i].uuid);
	}
	assert_string_equal(GRAPHREQ_CLIENT_REQUEST_NS, "e949fd02-0f89-5c91-a657-043613fb51a9");
}

#define OPLOC                                                                                      \
	"/chats('19:82fe7758-5bb3-4f0d-a43f-e555fd399c6f_bfb5bb25-3a8d-487d-9828-7875ced51a30@"    \
	"unq."                                                                                     \
	"gbl.spaces')/operations('2432b57b-0abd-43db-aa7b-16eadd115d34-861f06db-0208-4815-b67a-"   \
	"965df0d28b7f-10adc8a6-60db-42e2-9761-e56a7e4c7bc9')"

static void test_location_only_on_the_same_host_and_version(void **state)
{
	(void)state;
	static const struct {
		const char *root, *loc, *want; /* want NULL: refused */
	} cases[] = {
	    {ROOT, OPLOC, ROOT OPLOC},
	    {ROOT "/", OPLOC, ROOT OPLOC},
	    {ROOT, "https://graph.microsoft.com/beta/chats('a')/operations('b')",
	     ROOT "/chats('a')/operations('b')"},
	    {ROOT, "HTTPS://GRAPH.microsoft.com:443/beta/chats('a')?x=1", ROOT "/chats('a')?x=1"},
	    {"http://127.0.0.1:8080/v1.0", "http://127.0.0.1:8080/v1.0/chats('a')/operations('b')",
	     "http://127.0.0.1:8080/v1.0/chats('a')/operations('b')"},
	    {ROOT, "https://evil.example/beta/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com.evil.example/beta/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com@evil.example/beta/chats('a')", NULL},
	    {ROOT, "https://user@graph.microsoft.com/beta/chats('a')", NULL},
	    {ROOT, "http://graph.microsoft.com/beta/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com:8443/beta/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com/v1.0/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com/betax/chats('a')", NULL},
	    {ROOT, "https://graph.microsoft.com/beta", NULL},
	    {ROOT, "https://graph.microsoft.com/beta//evil.example/x", NULL},
	    {ROOT, "//evil.example/beta/chats('a')", NULL},
	    {ROOT, "/chats('a')\r\nHost: evil.example", NULL},
	    {ROOT, "/chats('a')\n", NULL},
	    {ROOT, "/chats('a') x", NULL},
	    {ROOT, "/chats/../../x", NULL},
	    {ROOT, "/chats/..?x=1", NULL},
	    {ROOT, "/chats/%2E?x=1", NULL},
	    /* @odata.nextLink pages: the query keeps the topic, dots and all. */
	    {ROOT,
	     "https://graph.microsoft.com/beta/users('a%40b.com')/chats?$filter=topic%20eq%20"
	     "'Q3...%2e'&$expand=members&$skiptoken=X%2744537074%27",
	     ROOT "/users('a%40b.com')/chats?$filter=topic%20eq%20'Q3...%2e'&$expand=members"
	          "&$skiptoken=X%2744537074%27"},
	    {ROOT, "https://evil.example/beta/users('a')/chats?$skiptoken=1", NULL},
	    {ROOT, "http://graph.microsoft.com/beta/users('a')/chats?$skiptoken=1", NULL},
	    {ROOT, "/chats/%2e%2E/x", NULL},
	    {ROOT, "/chats\\..\\x", NULL},
	    {ROOT, "/\\evil.example/x", NULL},
	    {ROOT, "/chats('a')#frag", NULL},
	    {ROOT, "/chats('\xc3\xa9')", NULL},
	    {ROOT, "chats('a')", NULL},
	    {ROOT, "ftp://graph.microsoft.com/beta/chats", NULL},
	    {ROOT, "javascript:alert(1)", NULL},
	    {ROOT, "", NULL},
	};
	char out[GRAPHREQ_URL_MAX + 1];
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		bool ok = graphreq_resolve_location(cases[i].root, cases[i].loc, out, sizeof out);
		if (ok != (cases[i].want != NULL))
			fail_msg("case %zu (%s): %s", i, cases[i].loc, ok ? out : "refused");
		if (ok)
			assert_string_equal(out, cases[i].want);
	}
	char *longloc = malloc(GRAPHREQ_URL_MAX + 2);
	assert_non_null(longloc);
	memset(longloc, 'a', GRAPHREQ_URL_MAX + 1);
	longloc[0] = '/';
	longloc[GRAPHREQ_URL_MAX + 1] = '\0';
	assert_false(graphreq_resolve_location(ROOT, longloc, out, sizeof out));
	free(longloc);
	assert_false(graphreq_resolve_location(ROOT, OPLOC, out, 40));
}

/*
 * A poll URL read back from the state topic passes graphreq_resolve_location again before it
 * is polled (pipeline.c, resume_operation). What the daemon itself recorded (the output of a
 * fresh Location's check) passes unchanged, so every genuine operation resumes; a forged or
 * stale record aimed anywhere else is refused, so the bearer token stays on our host.
 */
static void test_location_restored(void **state)
{
	(void)state;
	static const char *const fresh[] = {
	    OPLOC,
	    "https://graph.microsoft.com/beta/chats('a')/operations('b')",
	    "/chats('19:a@thread.v2')/operations('o''p')?x=1",
	};
	static const char *const forged[] = {
	    "http://graph.microsoft.com/beta/chats('a')/operations('b')", /* plain http */
	    "https://127.0.0.1:9/beta/chats('a')/operations('b')",
	    "https://graph.microsoft.com:444/beta/chats('a')/operations('b')",
	    "https://graph.microsoft.com@127.0.0.1/beta/chats('a')/operations('b')",
	    "https://graph.microsoft.com/v1.0/chats('a')/operations('b')", /* other version */
	    "https://graph.microsoft.us/beta/chats('a')/operations('b')",  /* other cloud */
	    "",
	};
	char stored[GRAPHREQ_URL_MAX + 1], again[GRAPHREQ_URL_MAX + 1];
	for (size_t i = 0; i < sizeof fresh / sizeof fresh[0]; i++) {
		assert_true(graphreq_resolve_location(ROOT, fresh[i], stored, sizeof stored));
		assert_true(graphreq_resolve_location(ROOT, stored, again, sizeof again));
		assert_string_equal(again, stored);
	}
	for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++)
		if (graphreq_resolve_location(ROOT, forged[i], again, sizeof again))
			fail_msg("forged record accepted: %s -> %s", forged[i], again);
}

static void test_chat_url(void **state)
{
	(void)state;
	char out[1024];
	assert_true(graphreq_chat_url(ROOT, "19:a'b/c?d#e@thread.v2", out, sizeof out));
	assert_string_equal(out, ROOT "/chats('19%3Aa''b%2Fc%3Fd%23e@thread.v2')");
	assert_true(graphreq_chat_url(ROOT "/", "x", out, sizeof out));
	assert_string_equal(out, ROOT "/chats('x')");
	assert_false(graphreq_chat_url(ROOT, "", out, sizeof out));
	size_t need = strlen(ROOT "/chats('ab')") + 1;
	assert_true(graphreq_chat_url(ROOT, "ab", out, need));
	assert_false(graphreq_chat_url(ROOT, "ab", out, need - 1));
	assert_true(graphreq_chat_members_url(ROOT, "19:a'b@thread.v2", out, sizeof out));
	assert_string_equal(out, ROOT "/chats('19%3Aa''b@thread.v2')/members");
	need = strlen(ROOT "/chats('ab')/members") + 1;
	assert_true(graphreq_chat_members_url(ROOT, "ab", out, need));
	assert_false(graphreq_chat_members_url(ROOT, "ab", out, need - 1));
	assert_false(graphreq_chat_members_url(ROOT, "", out, sizeof out));
}

static void test_lookup_url(void **state)
{
	(void)state;
	char out[1024];
	assert_true(graphreq_lookup_url(ROOT, "o'brien@contoso.com",
	                                "Welcome, Jane & 'co' 100% #1/\xc3\xa9", out, sizeof out));
	assert_string_equal(out, ROOT "/users('o''brien@contoso.com')/chats?$filter=topic%20eq%20"
	                              "'Welcome%2C%20Jane%20%26%20''co''%20100%25%20%231%2F%C3%A9'"
	                              "&$expand=members");
	assert_false(graphreq_lookup_url(ROOT, "", "t", out, sizeof out));
	assert_false(graphreq_lookup_url(ROOT, "a@b.com", "t", out, 30));
}

static void test_user_id_url(void **state)
{
	(void)state;
	char out[1024];
	assert_true(graphreq_user_id_url(ROOT "/", "o'brien_x.com#EXT#@contoso.onmicrosoft.com",
	                                 out, sizeof out));
	assert_string_equal(out, ROOT "/users('o''brien_x.com%23EXT%23@contoso.onmicrosoft.com')"
	                              "?$select=id");
	assert_false(graphreq_user_id_url(ROOT, "", out, sizeof out));
	assert_false(graphreq_user_id_url(ROOT, "a@b.com", out, strlen(ROOT "/users('a@b.com')")));
	assert_true(
	    graphreq_user_id_url(ROOT, "a@b.com", out, sizeof ROOT "/users('a@b.com')?$select=id"));
	assert_false(graphreq_user_id_url(ROOT, "a@b.com", out,
	                                  sizeof ROOT "/users('a@b.com')?$select=id" - 1));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_documented_bodies),  cmocka_unit_test(test_example5_guest),
	    cmocka_unit_test(test_body_json_escaping), cmocka_unit_test(test_bind_url_escaping),
	    cmocka_unit_test(test_client_request_id),  cmocka_unit_test(test_location_only_on_the_same_host_and_version),
	    cmocka_unit_test(test_lookup_url),         cmocka_unit_test(test_location_restored),
	    cmocka_unit_test(test_chat_url),           cmocka_unit_test(test_user_id_url),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
