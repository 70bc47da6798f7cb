/*
 * graphreq.c - Graph request builder: body, bind URLs, client-request-id, Location.
 */
#include "graphreq.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cpjson.h"
#include "dynbuf.h"

/* GRAPHREQ_CLIENT_REQUEST_NS as bytes. */
static const unsigned char client_request_ns[16] = {0xe9, 0x49, 0xfd, 0x02, 0x0f, 0x89, 0x5c, 0x91,
                                                    0xa6, 0x57, 0x04, 0x36, 0x13, 0xfb, 0x51, 0xa9};

/* Characters that stay as they are inside a quoted OData literal in a URL. */
static bool literal_safe(unsigned char ch)
{
	return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
	       strchr("-._~@'", ch) != NULL;
}

/* s as the inside of an OData string literal ('' for '), percent-encoded for a URL. */
static void put_literal(struct dynbuf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '\'') {
			dynbuf_adds(b, "''");
		} else if (literal_safe(*p)) {
			dynbuf_add(b, p, 1);
		} else {
			char enc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
			dynbuf_add(b, enc, 3);
		}
	}
}

/* version_root without its trailing slashes, so "…/v1.0/" and "…/v1.0" give one URL. */
static void put_root(struct dynbuf *b, const char *root)
{
	size_t n = strlen(root);
	while (n > 0 && root[n - 1] == '/')
		n--;
	dynbuf_add(b, root, n);
}

/* "{root}/{segment}('{key}')", key as an OData literal, percent-encoded. */
static bool keyed_url(const char *root, const char *segment, const char *key, char *out, size_t cap)
{
	struct dynbuf b;
	dynbuf_init_fixed(&b, out, cap);
	if (!root || !*root || !key || !*key)
		return false;
	put_root(&b, root);
	dynbuf_adds(&b, segment);
	dynbuf_adds(&b, "('");
	put_literal(&b, key);
	dynbuf_adds(&b, "')");
	return dynbuf_ok(&b);
}

bool graphreq_user_bind_url(const char *bind_root, const char *user_id, char *out, size_t cap)
{
	return keyed_url(bind_root, "/users", user_id, out, cap);
}

bool graphreq_chat_url(const char *version_root, const char *chat_id, char *out, size_t cap)
{
	return keyed_url(version_root, "/chats", chat_id, out, cap);
}

bool graphreq_chat_members_url(const char *version_root, const char *chat_id, char *out, size_t cap)
{
	static const char suffix[] = "/members";
	if (!keyed_url(version_root, "/chats", chat_id, out, cap))
		return false;
	size_t used = strlen(out);
	if (cap - used < sizeof suffix)
		return false;
	memcpy(out + used, suffix, sizeof suffix);
	return true;
}

static bool arr_add(json_object *arr, json_object *val)
{
	if (!val)
		return false;
	if (json_object_array_add(arr, val) != 0) {
		json_object_put(val);
		return false;
	}
	return true;
}

static json_object *member_json(const struct event_member *m, const char *bind_root)
{
	char url[GRAPHREQ_URL_MAX];
	json_object *o = json_object_new_object(), *roles = json_object_new_array();
	if (!o || !roles)
		goto fail;
	if (!arr_add(roles, json_object_new_string(m->guest ? "guest" : "owner")))
		goto fail;
	if (!graphreq_user_bind_url(bind_root, m->user_id, url, sizeof url))
		goto fail;
	if (!cpjson_put(o, "@odata.type",
	                json_object_new_string("#microsoft.graph.aadUserConversationMember")))
		goto fail;
	bool ok = cpjson_put(o, "roles", roles);
	roles = NULL;
	if (!ok || !cpjson_put(o, "user@odata.bind", json_object_new_string(url)))
		goto fail;
	if (m->tenant_id && !cpjson_put(o, "tenantId", json_object_new_string(m->tenant_id)))
		goto fail;
	return o;
fail:
	json_object_put(roles);
	json_object_put(o);
	return NULL;
}

static bool add_members(json_object *root, const struct event_request *ev, const char *bind_root)
{
	json_object *arr = json_object_new_array();
	if (!cpjson_put(root, "members", arr))
		return false;
	for (size_t i = 0; i < ev->n_members; i++) {
		if (!arr_add(arr, member_json(&ev->members[i], bind_root)))
			return false;
	}
	return true;
}

static bool add_app(json_object *root, const struct event_request *ev, const char *bind_root)
{
	struct dynbuf b;
	char url[GRAPHREQ_URL_MAX];
	json_object *arr = json_object_new_array(), *app = json_object_new_object();
	if (!cpjson_put(root, "installedApps", arr) || !arr_add(arr, app))
		return false;
	dynbuf_init_fixed(&b, url, sizeof url);
	put_root(&b, bind_root);
	dynbuf_adds(&b, "/appCatalogs/teamsApps/");
	/* A validated app id is a GUID; escaping keeps that true for any caller. */
	put_literal(&b, ev->app_id);
	return dynbuf_ok(&b) && cpjson_put(app, "teamsApp@odata.bind", json_object_new_string(url));
}

char *graphreq_chat_body(const struct event_request *ev, const char *bind_root)
{
	char *text = NULL;
	json_object *root = json_object_new_object();
	if (!root || !bind_root || !*bind_root)
		goto fail;
	const char *type = ev->chat_type == EVENT_CHAT_GROUP ? "group" : "oneOnOne";
	if (!cpjson_put(root, "chatType", json_object_new_string(type)))
		goto fail;
	if (ev->chat_type == EVENT_CHAT_GROUP && ev->topic &&
	    !cpjson_put(root, "topic", json_object_new_string(ev->topic)))
		goto fail;
	if (!add_members(root, ev, bind_root))
		goto fail;
	if (ev->app_id && !add_app(root, ev, bind_root))
		goto fail;
	const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN |
	                                                         JSON_C_TO_STRING_NOSLASHESCAPE);
	if (s)
		text = strdup(s);
fail:
	json_object_put(root);
	return text;
}

bool graphreq_client_request_id(const char *event_id, char out[37])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	bool ok = false;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	if (!ctx || !event_id)
		goto fail;
	if (EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) != 1 ||
	    EVP_DigestUpdate(ctx, client_request_ns, sizeof client_request_ns) != 1 ||
	    EVP_DigestUpdate(ctx, event_id, strlen(event_id)) != 1 ||
	    EVP_DigestFinal_ex(ctx, md, &mdlen) != 1 || mdlen < 16)
		goto fail;
	/* RFC 9562 section 5.5: version 5 in the high nibble of byte 6, variant 10 in byte 8. */
	md[6] = (unsigned char)((md[6] & 0x0f) | 0x50);
	md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
	static const char hex[] = "0123456789abcdef";
	for (int i = 0, o = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			out[o++] = '-';
		out[o++] = hex[md[i] >> 4];
		out[o++] = hex[md[i] & 15];
	}
	out[36] = '\0';
	ok = true;
fail:
	EVP_MD_CTX_free(ctx);
	return ok;
}

/*
 * Printable ASCII without '\', '#', and no "..", "%2e" before the query: nothing that could
 * re-aim a path. A query may hold them: a next link carries the $filter's topic.
 */
static bool location_chars_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > GRAPHREQ_URL_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch <= 0x20 || ch >= 0x7f || ch == '\\' || ch == '#')
			return false;
	}
	size_t path_len = strcspn(s, "?");
	for (size_t i = 0; i + 1 < path_len; i++)
		if ((s[i] == '.' && s[i + 1] == '.') ||
		    (i + 2 < path_len && strncasecmp(s + i, "%2e", 3) == 0))
			return false;
	return true;
}

/* The parts of an absolute http(s) URL that decide where a request goes. */
struct url_parts {
	char *scheme, *host, *port, *user, *path, *query;
};

static void url_parts_free(struct url_parts *u)
{
	curl_free(u->scheme);
	curl_free(u->host);
	curl_free(u->port);
	curl_free(u->user);
	curl_free(u->path);
	curl_free(u->query);
}

static bool url_split(const char *url, struct url_parts *u)
{
	bool ok = false;
	CURLU *h = curl_url();
	*u = (struct url_parts){0};
	if (!h || curl_url_set(h, CURLUPART_URL, url, CURLU_PATH_AS_IS) != CURLUE_OK)
		goto fail;
	if (curl_url_get(h, CURLUPART_SCHEME, &u->scheme, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_HOST, &u->host, 0) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PORT, &u->port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
	    curl_url_get(h, CURLUPART_PATH, &u->path, 0) != CURLUE_OK)
		goto fail;
	/* Absent parts are fine; anything else is an error. */
	(void)curl_url_get(h, CURLUPART_USER, &u->user, 0);
	(void)curl_url_get(h, CURLUPART_QUERY, &u->query, 0);
	ok = true;
fail:
	curl_url_cleanup(h);
	return ok;
}

/* An absolute Location on version_root's origin, under its path: the rest after that path. */
static bool absolute_rest(const char *version_root, const char *location, struct dynbuf *b)
{
	struct url_parts r, l;
	bool ok = false;
	if (strncasecmp(location, "https://", 8) != 0 && strncasecmp(location, "http://", 7) != 0)
		return false;
	bool have_r = url_split(version_root, &r), have_l = url_split(location, &l);
	if (!have_r || !have_l || l.user)
		goto fail;
	if (strcasecmp(r.scheme, l.scheme) != 0 || strcasecmp(r.host, l.host) != 0 ||
	    strcmp(r.port, l.port) != 0)
		goto fail;
	size_t plen = strlen(r.path);
	while (plen > 0 && r.path[plen - 1] == '/')
		plen--;
	if (strncmp(l.path, r.path, plen) != 0 || l.path[plen] != '/' || l.path[plen + 1] == '/')
		goto fail;
	put_root(b, version_root);
	dynbuf_adds(b, l.path + plen);
	if (l.query) {
		dynbuf_adds(b, "?");
		dynbuf_adds(b, l.query);
	}
	ok = dynbuf_ok(b);
fail:
	if (have_r)
		url_parts_free(&r);
	if (have_l)
		url_parts_free(&l);
	return ok;
}

bool graphreq_resolve_location(const char *version_root, const char *location, char *out,
                               size_t cap)
{
	struct dynbuf b;
	dynbuf_init_fixed(&b, out, cap);
	if (!version_root || !*version_root || !location || !location_chars_ok(location))
		return false;
	if (location[0] == '/') {
		if (location[1] == '/')
			return false; /* scheme-relative: another host */
		put_root(&b, version_root);
		dynbuf_adds(&b, location);
		return dynbuf_ok(&b) && dynbuf_len(&b) <= GRAPHREQ_URL_MAX;
	}
	if (!absolute_rest(version_root, location, &b)) {
		if (cap)
			out[0] = '\0';
		return false;
	}
	return dynbuf_len(&b) <= GRAPHREQ_URL_MAX;
}

bool graphreq_lookup_url(const char *version_root, const char *owner_user_id, const char *topic,
                         char *out, size_t cap)
{
	struct dynbuf b;
	dynbuf_init_fixed(&b, out, cap);
	if (!version_root || !*version_root || !owner_user_id || !*owner_user_id || !topic)
		return false;
	put_root(&b, version_root);
	dynbuf_adds(&b, "/users('");
	put_literal(&b, owner_user_id);
	dynbuf_adds(&b, "')/chats?$filter=topic%20eq%20'");
	put_literal(&b, topic);
	dynbuf_adds(&b, "'&$expand=members");
	return dynbuf_ok(&b);
}

/* The same URL as a bind, which names the user the same way, plus the query. */
bool graphreq_user_id_url(const char *version_root, const char *user, char *out, size_t cap)
{
	if (!graphreq_user_bind_url(version_root, user, out, cap))
		return false;
	size_t n = strlen(out);
	return snprintf(out + n, cap - n, "?$select=id") < (int)(cap - n);
}
