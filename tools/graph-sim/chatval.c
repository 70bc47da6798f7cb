/*
 * chatval.c - Graph's validation of a create-chat request body.
 *
 * Pure: runs outside the state lock. Strict like OData: unknown properties are refused,
 * binds must name the same API version as the request, user ids in users('...') are OData
 * string literals ('' escapes a quote), possibly percent-encoded, and must be a GUID or a
 * user principal name.
 */
#include <ctype.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gsim.h"

#define UPN_MAX 113

static bool bad(struct gs_graph_err *e, const char *fmt, ...) CP_PRINTF(2, 3);
static bool bad(struct gs_graph_err *e, const char *fmt, ...)
{
	va_list ap;
	e->status = 400;
	e->code = "BadRequest";
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
	return false;
}

static bool only_keys(json_object *o, const char *const *keys, size_t n, const char *type,
                      struct gs_graph_err *e)
{
	json_object_object_foreach(o, key, val)
	{
		bool ok = false;
		(void)val;
		for (size_t i = 0; i < n; i++)
			ok |= strcmp(key, keys[i]) == 0;
		if (!ok)
			return bad(
			    e,
			    "The property '%s' does not exist on type '%s'. Make sure to only "
			    "use property names that are defined by the type.",
			    key, type);
	}
	return true;
}

/*
 * "http(s)://host/{version}/{what}": returns what follows, percent-decoded, in buf (or
 * NULL when the URL does not have that shape).
 */
static const char *bind_tail(const char *url, const char *version, const char *what, char *buf,
                             size_t cap)
{
	const char *p;
	if (strncmp(url, "https://", 8) == 0)
		p = url + 8;
	else if (strncmp(url, "http://", 7) == 0)
		p = url + 7;
	else
		return NULL;
	const char *slash = strchr(p, '/');
	if (!slash || slash == p)
		return NULL;
	if (snprintf(buf, cap, "%s", slash) >= (int)cap)
		return NULL;
	MHD_http_unescape(buf);
	size_t vl = strlen(version), wl = strlen(what);
	if (buf[0] != '/' || strncmp(buf + 1, version, vl) != 0 || buf[1 + vl] != '/' ||
	    strncmp(buf + 2 + vl, what, wl) != 0)
		return NULL;
	return buf + 2 + vl + wl;
}

/* '#' is allowed: guest UPNs are "jane_fabrikam.com#EXT#@contoso.onmicrosoft.com". */
static bool upn_ok(const char *s)
{
	const char *at = strchr(s, '@');
	size_t len = strlen(s);
	if (!at || at == s || !at[1] || strchr(at + 1, '@') || len > UPN_MAX)
		return false;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p <= ' ' || *p == 0x7f || strchr("/\\?()<>,;:\"[]", *p))
			return false;
	return true;
}

/* users('<OData literal>') -> the id, validated, into m. */
static bool member_user(const char *bind, const char *version, struct gs_member *m,
                        struct gs_graph_err *e)
{
	char buf[1024], id[512];
	size_t n = 0;
	const char *lit = bind_tail(bind, version, "users('", buf, sizeof(buf));
	size_t len = lit ? strlen(lit) : 0;
	if (!lit || len < 2 || strcmp(lit + len - 2, "')") != 0)
		return bad(e,
		           "Invalid bind property value '%s': expected "
		           "https://graph.microsoft.com/%s/users('{id}').",
		           bind, version);
	size_t end = len - 2; /* the literal's content ends before "')" */
	for (size_t i = 0; i < end; i++) {
		if (n + 1 >= sizeof(id))
			return bad(e, "The user id in '%s' is too long.", bind);
		if (lit[i] == '\'') {
			if (i + 1 >= end || lit[i + 1] != '\'')
				return bad(e, "Invalid OData string literal in '%s'.", bind);
			i++;
		}
		id[n++] = lit[i];
	}
	id[n] = '\0';
	if (gs_is_guid(id)) {
		for (char *p = id; *p; p++)
			*p = (char)tolower((unsigned char)*p);
		memcpy(m->guid, id, GS_GUID_LEN + 1);
	} else if (upn_ok(id)) {
		gs_guid_from_name(id, m->guid);
	} else {
		return bad(e, "Invalid user id '%s': not a GUID or a user principal name.", id);
	}
	m->user_id = strdup(id);
	return m->user_id ? true : bad(e, "Out of memory.");
}

static bool parse_member(json_object *o, const char *version, struct gs_member *m,
                         struct gs_graph_err *e)
{
	static const char *const keys[] = {"@odata.type", "roles", "user@odata.bind", "tenantId"};
	json_object *v;
	if (!json_object_is_type(o, json_type_object))
		return bad(e, "Each member must be an object.");
	if (!only_keys(o, keys, CP_ARRAY_LEN(keys), "microsoft.graph.aadUserConversationMember", e))
		return false;
	if (!json_object_object_get_ex(o, "@odata.type", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), "#microsoft.graph.aadUserConversationMember") != 0)
		return bad(e, "Each member needs \"@odata.type\": "
		              "\"#microsoft.graph.aadUserConversationMember\".");
	if (!json_object_object_get_ex(o, "roles", &v) ||
	    !json_object_is_type(v, json_type_array) || json_object_array_length(v) != 1 ||
	    !json_object_is_type(json_object_array_get_idx(v, 0), json_type_string))
		return bad(e, "Each member must have roles [\"owner\"] or [\"guest\"].");
	const char *role = json_object_get_string(json_object_array_get_idx(v, 0));
	if (strcmp(role, "owner") != 0 && strcmp(role, "guest") != 0)
		return bad(e, "Invalid member role '%s': expected owner or guest.", role);
	m->guest = role[0] == 'g';
	if (json_object_object_get_ex(o, "tenantId", &v)) {
		if (!json_object_is_type(v, json_type_string) ||
		    !gs_is_guid(json_object_get_string(v)))
			return bad(e, "Invalid member tenantId: expected a GUID.");
		snprintf(m->tenant_id, sizeof(m->tenant_id), "%s", json_object_get_string(v));
	}
	if (!json_object_object_get_ex(o, "user@odata.bind", &v) ||
	    !json_object_is_type(v, json_type_string))
		return bad(e, "Each member needs a user@odata.bind string.");
	return member_user(json_object_get_string(v), version, m, e);
}

static bool parse_members(json_object *arr, const char *version, struct gs_chat *c,
                          struct gs_graph_err *e)
{
	if (!arr || !json_object_is_type(arr, json_type_array) ||
	    json_object_array_length(arr) == 0)
		return bad(e, "The members collection is required and cannot be empty.");
	size_t n = json_object_array_length(arr);
	if (!c->group && n != 2)
		return bad(e, "A oneOnOne chat must have exactly 2 members, got %zu.", n);
	if (c->group && (n < 2 || n > GS_MEMBERS_MAX))
		return bad(e, "A group chat must have 2 to %d members, got %zu.", GS_MEMBERS_MAX,
		           n);
	c->m = calloc(n, sizeof(*c->m));
	if (!c->m)
		return bad(e, "Out of memory.");
	for (size_t i = 0; i < n; i++) {
		c->nm = i + 1;
		if (!parse_member(json_object_array_get_idx(arr, i), version, &c->m[i], e))
			return false;
		for (size_t j = 0; j < i; j++)
			if (strcmp(c->m[j].guid, c->m[i].guid) == 0)
				return bad(e, "Duplicate member '%s'.", c->m[i].user_id);
	}
	return true;
}

static bool parse_apps(json_object *arr, const char *version, struct gs_chat *c,
                       struct gs_graph_err *e)
{
	static const char *const keys[] = {"teamsApp@odata.bind"};
	char buf[1024];
	json_object *v;
	if (!json_object_is_type(arr, json_type_array))
		return bad(e, "installedApps must be a collection.");
	if (json_object_array_length(arr) > 1)
		return bad(e, "Only one app installation is supported when creating a chat.");
	if (json_object_array_length(arr) == 0)
		return true;
	json_object *o = json_object_array_get_idx(arr, 0);
	if (!json_object_is_type(o, json_type_object) ||
	    !only_keys(o, keys, 1, "microsoft.graph.teamsAppInstallation", e))
		return e->status ? false : bad(e, "Each installedApps entry must be an object.");
	const char *app = json_object_object_get_ex(o, "teamsApp@odata.bind", &v) &&
	                          json_object_is_type(v, json_type_string)
	                      ? bind_tail(json_object_get_string(v), version,
	                                  "appCatalogs/teamsApps/", buf, sizeof(buf))
	                      : NULL;
	if (!app || !gs_is_guid(app))
		return bad(e,
		           "Invalid teamsApp@odata.bind: expected "
		           "https://graph.microsoft.com/%s/appCatalogs/teamsApps/{app id GUID}.",
		           version);
	snprintf(c->apps[0], sizeof(c->apps[0]), "%s", app);
	c->napps = 1;
	return true;
}

static bool parse_top(json_object *o, const char *version, struct gs_chat *c,
                      struct gs_graph_err *e)
{
	static const char *const keys[] = {"@odata.type", "chatType", "topic", "members",
	                                   "installedApps"};
	json_object *v;
	if (!only_keys(o, keys, CP_ARRAY_LEN(keys), "microsoft.graph.chat", e))
		return false;
	if (json_object_object_get_ex(o, "@odata.type", &v) &&
	    (!json_object_is_type(v, json_type_string) ||
	     strcmp(json_object_get_string(v), "#microsoft.graph.chat") != 0))
		return bad(e, "Invalid @odata.type: expected #microsoft.graph.chat.");
	if (!json_object_object_get_ex(o, "chatType", &v) ||
	    !json_object_is_type(v, json_type_string))
		return bad(e, "The chatType property is required.");
	const char *type = json_object_get_string(v);
	if (strcmp(type, "group") != 0 && strcmp(type, "oneOnOne") != 0)
		return bad(e,
		           "Cannot convert the literal '%s' to the expected type "
		           "'microsoft.graph.chatType'.",
		           type);
	c->group = type[0] == 'g';
	if (json_object_object_get_ex(o, "topic", &v) && !json_object_is_type(v, json_type_null)) {
		if (!json_object_is_type(v, json_type_string))
			return bad(e, "The topic property must be a string.");
		if (!c->group)
			return bad(e, "A topic can only be set on a group chat.");
		c->topic = strdup(json_object_get_string(v));
		if (!c->topic)
			return bad(e, "Out of memory.");
	}
	json_object *members = NULL;
	json_object_object_get_ex(o, "members", &members);
	if (!parse_members(members, version, c, e))
		return false;
	if (json_object_object_get_ex(o, "installedApps", &v) &&
	    !json_object_is_type(v, json_type_null))
		return parse_apps(v, version, c, e);
	return true;
}

struct gs_chat *gs_chat_parse(const struct gs_req *q, const char *version, struct gs_graph_err *e)
{
	const char *ct = gs_req_header(q, "Content-Type");
	json_tokener *tok = NULL;
	json_object *o = NULL;
	struct gs_chat *c = calloc(1, sizeof(*c));
	memset(e, 0, sizeof(*e));
	if (!c)
		return bad(e, "Out of memory."), NULL;
	if (!ct || strncasecmp(ct, "application/json", 16) != 0) {
		bad(e, "Content-Type must be application/json.");
		e->status = 415;
		e->code = "UnsupportedMediaType";
		goto fail;
	}
	tok = json_tokener_new();
	o = tok ? json_tokener_parse_ex(tok, q->body, (int)q->body_len) : NULL;
	size_t end = tok ? json_tokener_get_parse_end(tok) : 0;
	while (end < q->body_len && isspace((unsigned char)q->body[end]))
		end++;
	if (!o || json_tokener_get_error(tok) != json_tokener_success || end != q->body_len) {
		bad(e, "Invalid request body: not a JSON document (%s).",
		    tok ? json_tokener_error_desc(json_tokener_get_error(tok)) : "out of memory");
		goto fail;
	}
	if (!json_object_is_type(o, json_type_object)) {
		bad(e, "The request body must be a JSON object.");
		goto fail;
	}
	if (!parse_top(o, version, c, e))
		goto fail;
	c->body = strndup(q->body, q->body_len);
	if (!c->body) {
		bad(e, "Out of memory.");
		goto fail;
	}
	json_object_put(o);
	json_tokener_free(tok);
	return c;
fail:
	json_object_put(o);
	if (tok)
		json_tokener_free(tok);
	gs_chat_free(c);
	return NULL;
}

void gs_chat_free(struct gs_chat *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->nm; i++)
		free(c->m[i].user_id);
	free(c->m);
	free(c->topic);
	free(c->tenant);
	free(c->body);
	free(c->pair_key);
	free(c);
}
