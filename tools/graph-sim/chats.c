/*
 * chats.c - the Graph side: routing, POST /chats (throttling, faults, creation, one-on-one
 * dedup, async operations), and the chat store the ledger and lookups read.
 *
 * Side effects happen when a request arrives; the answer may leave later (latency, hang).
 * A chat created through an operation exists only once that operation has succeeded:
 * operations are settled lazily whenever someone could observe the difference.
 */
#include <ctype.h>
#include <json-c/linkhash.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "gsim.h"

struct post {
	char crid[GS_CRID_MAX];
	int status;
	const char *fault;
	int64_t at;
};

struct op {
	char id[GS_ID_MAX];
	char chat_id[GS_ID_MAX];
	char *tenant;
	struct gs_chat *pending; /* owned until settled */
	int64_t created_mono, created_wall, in_progress_at, done_at;
	bool fail, settled;
	int64_t *polls;
	size_t npolls, cap;
};

#define VEC(T)                                                                                     \
	struct {                                                                                   \
		T *v;                                                                              \
		size_t n, cap;                                                                     \
	}

static VEC(struct gs_chat *) chats;
static VEC(struct post) posts;
static VEC(struct op *) ops;
static VEC(struct op *) pending_ops;
static struct lh_table *chat_by_id, *chat_by_pair, *op_by_id, *group_crids;
static uint64_t duplicate_group_chats;

#define VEC_PUSH(vec, item)                                                                        \
	({                                                                                         \
		bool ok_ = true;                                                                   \
		if ((vec).n == (vec).cap) {                                                        \
			size_t nc_ = (vec).cap ? (vec).cap * 2 : 64;                               \
			void *nv_ = realloc((vec).v, nc_ * sizeof(*(vec).v));                      \
			if (nv_) {                                                                 \
				(vec).v = nv_;                                                     \
				(vec).cap = nc_;                                                   \
			} else {                                                                   \
				ok_ = false;                                                       \
			}                                                                          \
		}                                                                                  \
		if (ok_)                                                                           \
			(vec).v[(vec).n++] = (item);                                               \
		ok_;                                                                               \
	})

static void free_key(struct lh_entry *e)
{
	free((void *)lh_entry_k(e));
}

bool gs_chats_init(void)
{
	chat_by_id = lh_kchar_table_new(1024, NULL);
	chat_by_pair = lh_kchar_table_new(1024, NULL);
	op_by_id = lh_kchar_table_new(256, NULL);
	group_crids = lh_kchar_table_new(1024, free_key);
	return chat_by_id && chat_by_pair && op_by_id && group_crids;
}

static void op_free(struct op *o)
{
	gs_chat_free(o->pending);
	free(o->tenant);
	free(o->polls);
	free(o);
}

void gs_chats_reset_locked(void)
{
	for (size_t i = 0; i < chats.n; i++) {
		lh_table_delete(chat_by_id, chats.v[i]->id);
		if (chats.v[i]->pair_key)
			lh_table_delete(chat_by_pair, chats.v[i]->pair_key);
		gs_chat_free(chats.v[i]);
	}
	for (size_t i = 0; i < ops.n; i++) {
		lh_table_delete(op_by_id, ops.v[i]->id);
		op_free(ops.v[i]);
	}
	chats.n = posts.n = ops.n = pending_ops.n = 0;
	lh_table_free(group_crids);
	group_crids = lh_kchar_table_new(1024, free_key);
	duplicate_group_chats = 0;
}

void gs_chats_shutdown(void)
{
	gs_lock();
	gs_chats_reset_locked();
	gs_unlock();
	free(chats.v);
	free(posts.v);
	free(ops.v);
	free(pending_ops.v);
	lh_table_free(chat_by_id);
	lh_table_free(chat_by_pair);
	lh_table_free(op_by_id);
	lh_table_free(group_crids);
}

/* One-on-one chats are named after their two users, smaller GUID first. */
static bool assign_id(struct gs_chat *c)
{
	if (c->group) {
		snprintf(c->id, sizeof(c->id), "19:%016llx%016llx@thread.v2",
		         (unsigned long long)gs_rand_u64(), (unsigned long long)gs_rand_u64());
		return true;
	}
	const char *a = c->m[0].guid, *b = c->m[1].guid;
	if (strcmp(a, b) > 0) {
		const char *t = a;
		a = b;
		b = t;
	}
	snprintf(c->id, sizeof(c->id), "19:%s_%s@unq.gbl.spaces", a, b);
	c->pair_key = strdup(c->id);
	return c->pair_key != NULL;
}

static struct gs_chat *existing_pair(const struct gs_chat *c)
{
	void *v;
	return c->pair_key && lh_table_lookup_ex(chat_by_pair, c->pair_key, &v) ? v : NULL;
}

/* Stores a new chat (the store takes ownership); counts duplicate group chats. */
static bool store_chat(struct gs_chat *c)
{
	if (!VEC_PUSH(chats, c))
		return false;
	lh_table_insert(chat_by_id, c->id, c);
	if (c->pair_key)
		lh_table_insert(chat_by_pair, c->pair_key, c);
	if (c->group && c->crid[0]) {
		void *v;
		if (lh_table_lookup_ex(group_crids, c->crid, &v)) {
			duplicate_group_chats++;
		} else {
			char *k = strdup(c->crid);
			if (k && lh_table_insert(group_crids, k, NULL) != 0)
				free(k);
		}
	}
	return true;
}

/* Operations whose time has come create their chat (unless they fail). */
static void settle_locked(int64_t now)
{
	for (size_t i = 0; i < pending_ops.n;) {
		struct op *o = pending_ops.v[i];
		if (o->done_at > now) {
			i++;
			continue;
		}
		o->settled = true;
		pending_ops.v[i] = pending_ops.v[--pending_ops.n];
		struct gs_chat *c = o->pending;
		o->pending = NULL;
		if (o->fail || existing_pair(c)) {
			gs_chat_free(c);
			continue;
		}
		c->created_wall = o->created_wall + (o->done_at - o->created_mono);
		if (!store_chat(c))
			gs_chat_free(c);
	}
}

static void add_graph_headers(const struct gs_req *q, struct gs_reply *r)
{
	gs_reply_header(r, "request-id", "%s", r->request_id);
	gs_reply_header(r, "client-request-id", "%s", q->crid ? q->crid : r->request_id);
	gs_reply_header(r, "x-ms-ags-diagnostic",
	                "{\"ServerInfo\":{\"DataCenter\":\"Sim\",\"Slice\":\"E\",\"Ring\":\"1\","
	                "\"ScaleUnit\":\"000\",\"RoleInstance\":\"graph-sim\"}}");
	gs_reply_header(r, "Strict-Transport-Security", "max-age=31536000");
}

/* Graph's clock as the simulator shows it: ours plus clock_skew_s. */
static int64_t skew_ms(void)
{
	return (int64_t)(gs.k.clock_skew_s * 1000);
}

/* A member's "email": its mail, which is its UPN unless the "users" knob says otherwise. */
static json_object *member_mail(const struct gs_member *m)
{
	const struct gs_user *u = gs_knobs_user(&gs.k, m->guid);
	if (u && u->mail)
		return json_object_new_string(u->mail);
	if (u)
		return json_object_new_string(u->upn);
	return strchr(m->user_id, '@') ? json_object_new_string(m->user_id) : NULL;
}

/*
 * Graph's known issue (chat-list): with $expand=members, list chats returns at most 25
 * members of a chat, whatever $top says. GET /chats/{id}/members lists them all.
 */
#define EXPAND_MEMBERS_MAX 25

/* The chat's members as conversationMember objects, the first max of them (0: all). */
static json_object *members_json(const struct gs_chat *c, size_t max)
{
	char buf[512];
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < c->nm && (!max || i < max); i++) {
		const struct gs_member *m = &c->m[i];
		json_object *mo = json_object_new_object();
		json_object_object_add(
		    mo, "@odata.type",
		    json_object_new_string("#microsoft.graph.aadUserConversationMember"));
		snprintf(buf, sizeof(buf), "%s##%s", c->id, m->guid);
		json_object_object_add(mo, "id", json_object_new_string(buf));
		json_object *roles = json_object_new_array();
		json_object_array_add(roles, json_object_new_string(m->guest ? "guest" : "owner"));
		json_object_object_add(mo, "roles", roles);
		json_object_object_add(mo, "displayName", NULL);
		json_object_object_add(mo, "userId", json_object_new_string(m->guid));
		json_object_object_add(mo, "email", member_mail(m));
		json_object_object_add(
		    mo, "tenantId",
		    json_object_new_string(m->tenant_id[0] ? m->tenant_id : c->tenant_guid));
		json_object_array_add(arr, mo);
	}
	return arr;
}

/* A chat; members: with its members, the first max_members of them (0: all). */
static json_object *gs_chat_json(const struct gs_req *q, const struct gs_chat *c,
                                 const char *version, bool context, bool members,
                                 size_t max_members)
{
	char buf[512], t[32];
	json_object *o = json_object_new_object();
	if (context) {
		char origin[256];
		gs_req_origin(q, origin, sizeof(origin));
		snprintf(buf, sizeof(buf), "%s/%s/$metadata#chats/$entity", origin, version);
		json_object_object_add(o, "@odata.context", json_object_new_string(buf));
	}
	json_object_object_add(o, "id", json_object_new_string(c->id));
	json_object_object_add(o, "topic", c->topic ? json_object_new_string(c->topic) : NULL);
	gs_fmt_time(c->created_wall + skew_ms(), t, sizeof(t));
	json_object_object_add(o, "createdDateTime", json_object_new_string(t));
	json_object_object_add(o, "lastUpdatedDateTime", json_object_new_string(t));
	json_object_object_add(o, "chatType",
	                       json_object_new_string(c->group ? "group" : "oneOnOne"));
	snprintf(buf, sizeof(buf), "https://teams.microsoft.com/l/chat/19%%3A%s/0?tenantId=%s",
	         c->id + 3, c->tenant_guid);
	json_object_object_add(o, "webUrl", json_object_new_string(buf));
	json_object_object_add(o, "tenantId", json_object_new_string(c->tenant_guid));
	if (members)
		json_object_object_add(o, "members", members_json(c, max_members));
	return o;
}

static void record_post(const struct gs_req *q, int status, const char *fault)
{
	struct post p = {.status = status, .fault = fault, .at = q->wall_ms};
	snprintf(p.crid, sizeof(p.crid), "%s", q->crid ? q->crid : "");
	(void)VEC_PUSH(posts, p);
}

/* 429 or 503 with Retry-After in the configured form; remembers it for violations. */
static void retry_reply(const struct gs_req *q, struct gs_reply *r, const char *tenant,
                        unsigned status, const char *code, const char *msg, double seconds)
{
	char ra[32];
	gs_reply_graph_error(r, q, status, code, "%s", msg);
	if (!gs_retry_after_value(seconds, ra, sizeof(ra)))
		return;
	gs_reply_header(r, "Retry-After", "%s", ra);
	if (tenant)
		gs_throttle_note_retry_locked(tenant,
		                              q->mono_ms + (int64_t)(strtod(ra, NULL) * 1000));
}

/* Injected faults shared by POST /chats and the operation GET; true if one fired. */
static bool inject_fault_locked(const struct gs_req *q, struct gs_reply *r, const char *tenant,
                                bool note_retry)
{
	const struct gs_knobs *k = &gs.k;
	if (gs_roll(k->fault_reset_rate)) {
		r->close = true;
		r->status = GS_ST_RESET;
	} else if (gs_roll(k->fault_hang_rate)) {
		r->close = true;
		r->status = GS_ST_HANG;
		r->delay_ms += (int64_t)(k->hang_s * 1000);
	} else if (gs_roll(k->fault_503_rate)) {
		retry_reply(q, r, note_retry ? tenant : NULL, 503, "ServiceNotAvailable",
		            "The service is temporarily unavailable. Please retry later.",
		            k->fault_503_retry_after_s);
	} else if (gs_roll(k->fault_504_rate)) {
		gs_reply_graph_error(r, q, 504, "GatewayTimeout", "The gateway timed out.");
	} else if (gs_roll(k->fault_500_rate)) {
		gs_reply_graph_error(r, q, 500, "InternalServerError",
		                     "An internal server error occurred.");
	} else {
		return false;
	}
	return true;
}

static const char *fault_name(const struct gs_reply *r)
{
	if (r->close)
		return r->status == GS_ST_RESET ? "reset" : "hang";
	return r->status == 503 ? "503" : r->status == 504 ? "504" : "500";
}

static struct op *new_op_locked(const struct gs_req *q, struct gs_chat *c)
{
	char g[3][GS_GUID_LEN + 1];
	struct op *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	for (int i = 0; i < 3; i++)
		gs_guid_random(g[i]);
	snprintf(o->id, sizeof(o->id), "%s-%s-%s", g[0], g[1], g[2]);
	snprintf(o->chat_id, sizeof(o->chat_id), "%s", c->id);
	o->tenant = strdup(c->tenant);
	o->created_mono = q->mono_ms;
	o->created_wall = q->wall_ms;
	o->in_progress_at = q->mono_ms + (int64_t)(gs.k.op_in_progress_after_s * 1000);
	o->done_at = q->mono_ms + (int64_t)(gs.k.op_done_after_s * 1000);
	o->fail = gs_roll(gs.k.op_fail_rate);
	if (!o->tenant || !VEC_PUSH(ops, o)) {
		op_free(o);
		return NULL;
	}
	if (!VEC_PUSH(pending_ops, o)) {
		ops.n--;
		op_free(o);
		return NULL;
	}
	o->pending = c;
	lh_table_insert(op_by_id, o->id, o);
	return o;
}

static void reply_202(const struct gs_req *q, struct gs_reply *r, struct gs_chat *c)
{
	struct op *o = new_op_locked(q, c);
	if (!o) {
		gs_chat_free(c);
		gs_reply_graph_error(r, q, 500, "InternalServerError", "Out of memory.");
		return;
	}
	r->status = 202;
	bool foreign = gs.k.hostile == GS_H_FOREIGN_LOCATION && gs_roll(gs.k.hostile_rate);
	const char *root =
	    gs.k.foreign_root ? gs.k.foreign_root : "https://graph.attacker.example/v1.0";
	gs_reply_header(r, "Location", "%s/chats('%s')/operations('%s')", foreign ? root : "",
	                o->chat_id, o->id);
}

/* 201 with the chat, or one of the hostile variants of it. */
static void reply_201(const struct gs_req *q, struct gs_reply *r, const struct gs_chat *c,
                      const char *version)
{
	enum gs_hostile h = gs_roll(gs.k.hostile_rate) ? gs.k.hostile : GS_H_NONE;
	json_object *o = gs_chat_json(q, c, version, true, false, 0);
	if (h == GS_H_NO_ID)
		json_object_object_del(o, "id");
	gs_reply_json(r, 201, o);
	r->content_type = "application/json;odata.metadata=minimal;odata.streaming=true;"
	                  "IEEE754Compatible=false;charset=utf-8";
	if (h == GS_H_INVALID_JSON && r->len > 20)
		r->len = r->len / 2;
	else if (h == GS_H_OVERSIZED_BODY)
		r->stream = GS_STREAM_OVERSIZED;
	else if (h == GS_H_ENDLESS_BODY)
		r->stream = GS_STREAM_ENDLESS;
}

/* Throttling and faults come before validation, as at Graph's front door. */
static bool front_door_locked(const struct gs_req *q, struct gs_reply *r, const char *tenant)
{
	double wait;
	gs_throttle_check_violation_locked(tenant, q->crid, q->mono_ms);
	if (gs.k.hostile == GS_H_RETRY_AFTER_YEAR && gs_roll(gs.k.hostile_rate)) {
		gs_reply_graph_error(r, q, 429, "TooManyRequests", "Too many requests.");
		gs_reply_header(r, "Retry-After", "31536000");
		record_post(q, 429, "retry_after_year");
		return false;
	}
	if (!gs_throttle_admit_locked(tenant, q->mono_ms, &wait)) {
		retry_reply(q, r, tenant, 429, "TooManyRequests",
		            "Too many requests. Rate limit has been exceeded; retry later.", wait);
		record_post(q, 429, NULL);
		return false;
	}
	if (inject_fault_locked(q, r, tenant, true)) {
		record_post(q, r->close ? 0 : (int)r->status, fault_name(r));
		return false;
	}
	return true;
}

/* An unknown user, or a late one whose time has not come (matched by id, UPN or its GUID). */
static bool user_unknown_locked(const struct gs_member *m, int64_t now)
{
	if (gs_strlist_has(&gs.k.unknown_users, m->user_id, true) ||
	    gs_strlist_has(&gs.k.unknown_users, m->guid, true))
		return true;
	for (size_t i = 0; i < gs.k.n_late_users; i++) {
		const struct gs_late_user *u = &gs.k.late_users[i];
		if (now < u->known_at_mono &&
		    (strcasecmp(u->user, m->user_id) == 0 || strcasecmp(u->user, m->guid) == 0))
			return true;
	}
	return false;
}

/*
 * A tenant whose admin has not consented to the app's permissions: its tokens carry no
 * roles, and Graph refuses with 403 and the message it gives for missing application
 * permissions. True when the reply was written.
 */
static bool consent_missing_locked(const struct gs_req *q, struct gs_reply *r,
                                   const struct gs_token *t, const char *permissions)
{
	if (!gs_strlist_has(&gs.k.consent_missing, t->tenant, true) &&
	    !gs_strlist_has(&gs.k.consent_missing, t->tenant_guid, true))
		return false;
	gs_reply_graph_error(r, q, 403, "Forbidden",
	                     "Missing role permissions on the request. API requires one of '%s'. "
	                     "Roles on the request ''.",
	                     permissions);
	return true;
}

static void post_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                        struct gs_chat *c, const struct gs_graph_err *err)
{
	const struct gs_token *t = gs_auth_bearer_locked(q, r);
	if (!t)
		goto out;
	if (consent_missing_locked(q, r, t, "Chat.Create")) {
		record_post(q, 403, NULL);
		goto out;
	}
	if (!front_door_locked(q, r, t->tenant))
		goto out;
	if (!c) {
		gs_reply_graph_error(r, q, err->status, err->code, "%s", err->msg);
		record_post(q, (int)r->status, NULL);
		goto out;
	}
	for (size_t i = 0; i < c->nm; i++) {
		if (user_unknown_locked(&c->m[i], q->mono_ms)) {
			gs_reply_graph_error(r, q, 404, "NotFound",
			                     "User '%s' was not found in the directory.",
			                     c->m[i].user_id);
			record_post(q, 404, NULL);
			goto out;
		}
	}
	for (size_t i = 0; i < c->nm; i++) {
		const struct gs_user *u = gs_knobs_user(&gs.k, c->m[i].user_id);
		if (u) /* a directory user: its object id, not the one derived from the UPN */
			memcpy(c->m[i].guid, u->id, sizeof(u->id));
	}
	c->tenant = strdup(t->tenant);
	snprintf(c->tenant_guid, sizeof(c->tenant_guid), "%s", t->tenant_guid);
	snprintf(c->crid, sizeof(c->crid), "%s", q->crid ? q->crid : "");
	c->created_wall = q->wall_ms;
	if (!c->tenant || !assign_id(c)) {
		gs_reply_graph_error(r, q, 500, "InternalServerError", "Out of memory.");
		goto out;
	}
	settle_locked(q->mono_ms);
	const struct gs_chat *made = existing_pair(c);
	if (!made && c->napps) {
		reply_202(q, r, c);
		record_post(q, 202, NULL);
		return;
	}
	if (!made) {
		if (!store_chat(c)) {
			gs_reply_graph_error(r, q, 500, "InternalServerError", "Out of memory.");
			goto out;
		}
		made = c;
		c = NULL;
	}
	if (gs_roll(gs.k.fault_created_504_rate)) {
		gs_reply_graph_error(r, q, 504, "GatewayTimeout", "The gateway timed out.");
		record_post(q, 504, "created_504");
	} else {
		reply_201(q, r, made, version);
		record_post(q, 201, NULL);
	}
out:
	gs_chat_free(c);
}

static const char *op_status(const struct op *o, int64_t now, int64_t *last_action_wall)
{
	int64_t at = o->created_mono;
	const char *s = "notStarted";
	if (now >= o->in_progress_at) {
		at = o->in_progress_at;
		s = "inProgress";
	}
	if (now >= o->done_at) {
		at = o->done_at;
		s = o->fail ? "failed" : "succeeded";
	}
	if (last_action_wall)
		*last_action_wall = o->created_wall + (at - o->created_mono);
	return s;
}

static json_object *op_json(const struct gs_req *q, const struct op *o, const char *version)
{
	char buf[512], t[32];
	int64_t last;
	const char *prefer = gs_req_header(q, "Prefer");
	bool unknown_enums = prefer && strcasestr(prefer, "include-unknown-enum-members");
	const char *status = op_status(o, q->mono_ms, &last);
	json_object *j = json_object_new_object();
	char origin[256];
	gs_req_origin(q, origin, sizeof(origin));
	snprintf(buf, sizeof(buf), "%s/%s/$metadata#chats('%s')/operations/$entity", origin,
	         version, o->chat_id);
	json_object_object_add(j, "@odata.context", json_object_new_string(buf));
	json_object_object_add(j, "id", json_object_new_string(o->id));
	json_object_object_add(
	    j, "operationType",
	    json_object_new_string(unknown_enums ? "createChat" : "unknownFutureValue"));
	gs_fmt_time(o->created_wall, t, sizeof(t));
	json_object_object_add(j, "createdDateTime", json_object_new_string(t));
	json_object_object_add(j, "status", json_object_new_string(status));
	gs_fmt_time(last, t, sizeof(t));
	json_object_object_add(j, "lastActionDateTime", json_object_new_string(t));
	json_object_object_add(j, "attemptsCount", json_object_new_int(1));
	json_object_object_add(j, "targetResourceId", json_object_new_string(o->chat_id));
	snprintf(buf, sizeof(buf), "/chats('%s')", o->chat_id);
	json_object_object_add(j, "targetResourceLocation", json_object_new_string(buf));
	json_object *err = NULL;
	if (strcmp(status, "failed") == 0) {
		err = json_object_new_object();
		json_object_object_add(err, "code", json_object_new_string("InternalServerError"));
		json_object_object_add(err, "message",
		                       json_object_new_string("The chat could not be created."));
	}
	json_object_object_add(j, "error", err);
	return j;
}

static void op_get_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                          const char *tenant, const char *chat_id, const char *op_id)
{
	void *v;
	if (inject_fault_locked(q, r, tenant, false))
		return;
	settle_locked(q->mono_ms);
	struct op *o = lh_table_lookup_ex(op_by_id, op_id, &v) ? v : NULL;
	if (!o || strcmp(o->chat_id, chat_id) != 0 || strcmp(o->tenant, tenant) != 0) {
		gs_reply_graph_error(r, q, 404, "NotFound", "Operation '%s' was not found.", op_id);
		return;
	}
	if (o->npolls == o->cap) {
		size_t nc = o->cap ? o->cap * 2 : 8;
		int64_t *np = realloc(o->polls, nc * sizeof(*np));
		if (np) {
			o->polls = np;
			o->cap = nc;
		}
	}
	if (o->npolls < o->cap)
		o->polls[o->npolls++] = q->wall_ms;
	gs_reply_json(r, 200, op_json(q, o, version));
}

/* `$filter` clauses joined by "and": topic eq, chatType eq, createdDateTime ge/gt/le/lt. */
#define FILTER_MAX 8
struct clause {
	enum { F_TOPIC, F_TYPE, F_CREATED } field;
	char op[4];
	char str[512];
	int64_t ms;
};

static bool read_value(const char **pp, char *out, size_t cap)
{
	const char *p = *pp;
	size_t n = 0;
	if (*p == '\'') {
		for (p++;; p++) {
			if (!*p)
				return false;
			if (*p == '\'' && p[1] != '\'')
				break;
			if (*p == '\'')
				p++;
			if (n + 1 >= cap)
				return false;
			out[n++] = *p;
		}
		p++;
	} else {
		while (*p && *p != ' ' && n + 1 < cap)
			out[n++] = *p++;
	}
	out[n] = '\0';
	*pp = p;
	return n > 0 || p[-1] == '\'';
}

static bool parse_clause(const char **pp, struct clause *c)
{
	char field[32], op[4];
	const char *p = *pp;
	int n = 0;
	while (*p == ' ')
		p++;
	while (*p && *p != ' ' && n < 31)
		field[n++] = *p++;
	field[n] = '\0';
	while (*p == ' ')
		p++;
	n = 0;
	while (*p && *p != ' ' && n < 3)
		op[n++] = *p++;
	op[n] = '\0';
	while (*p == ' ')
		p++;
	if (!read_value(&p, c->str, sizeof(c->str)))
		return false;
	snprintf(c->op, sizeof(c->op), "%s", op);
	*pp = p;
	if (strcmp(field, "topic") == 0 && strcmp(op, "eq") == 0)
		c->field = F_TOPIC;
	else if (strcmp(field, "chatType") == 0 && strcmp(op, "eq") == 0)
		c->field = F_TYPE;
	else if (strcmp(field, "createdDateTime") == 0 &&
	         (!strcmp(op, "ge") || !strcmp(op, "gt") || !strcmp(op, "le") || !strcmp(op, "lt")))
		c->field = F_CREATED;
	else
		return false;
	return c->field != F_CREATED || gs_parse_time(c->str, &c->ms);
}

static int parse_filter(const char *f, struct clause *cl)
{
	int n = 0;
	const char *p = f;
	while (n < FILTER_MAX) {
		if (!parse_clause(&p, &cl[n++]))
			return -1;
		while (*p == ' ')
			p++;
		if (!*p)
			return n;
		if (strncasecmp(p, "and ", 4) != 0)
			return -1;
		p += 4;
	}
	return -1;
}

static bool clause_match(const struct clause *c, const struct gs_chat *chat)
{
	int64_t t = chat->created_wall + skew_ms();
	switch (c->field) {
	case F_TOPIC:
		return chat->topic && strcmp(chat->topic, c->str) == 0;
	case F_TYPE:
		return strcmp(c->str, chat->group ? "group" : "oneOnOne") == 0;
	case F_CREATED:
		return c->op[0] == 'g' ? (c->op[1] == 'e' ? t >= c->ms : t > c->ms)
		                       : (c->op[1] == 'e' ? t <= c->ms : t < c->ms);
	}
	return false;
}

static bool has_member(const struct gs_chat *c, const char *user)
{
	const struct gs_user *u = gs_knobs_user(&gs.k, user);
	for (size_t i = 0; i < c->nm; i++)
		if (strcasecmp(c->m[i].user_id, user) == 0 || strcasecmp(c->m[i].guid, user) == 0 ||
		    (u && strcmp(c->m[i].guid, u->id) == 0))
			return true;
	return false;
}

/* Percent-encodes s for a URL, keeping unreserved characters and those of `keep`. */
static void url_encode(const char *s, const char *keep, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n = 0;
	for (const unsigned char *p = (const unsigned char *)s; *p && n + 4 < cap; p++) {
		if (isalnum(*p) || strchr("-._~", *p) || strchr(keep, *p)) {
			out[n++] = (char)*p;
		} else {
			out[n++] = '%';
			out[n++] = hex[*p >> 4];
			out[n++] = hex[*p & 15];
		}
	}
	out[n] = '\0';
}

/* Appends "name=value&" (value percent-encoded) when the request had that argument. */
static void keep_arg(const struct gs_req *q, const char *name, char *buf, size_t cap)
{
	char enc[2048];
	const char *v = gs_req_arg(q, name);
	size_t n = strlen(buf);
	if (!v)
		return;
	url_encode(v, "'", enc, sizeof(enc));
	snprintf(buf + n, cap - n, "%s=%s&", name, enc);
}

/*
 * The URL of the page after `next`: the same request with $skiptoken=next, on this host or,
 * in hostile mode foreign_next_link, on foreign_location_root's.
 */
static json_object *next_link(const struct gs_req *q, size_t next)
{
	char origin[256], path[1024], buf[4096];
	const char *rest = strchr(q->path + 1, '/'); /* after the version */
	gs_req_origin(q, origin, sizeof(origin));
	url_encode(q->path, "/'()@:$!*,;=", path, sizeof(path));
	if (gs.k.hostile == GS_H_FOREIGN_NEXT_LINK && rest && gs_roll(gs.k.hostile_rate)) {
		url_encode(rest, "/'()@:$!*,;=", path, sizeof(path));
		snprintf(origin, sizeof(origin), "%s",
		         gs.k.foreign_root ? gs.k.foreign_root
		                           : "https://graph.attacker.example/v1.0");
	}
	snprintf(buf, sizeof(buf), "%s%s?", origin, path);
	keep_arg(q, "$filter", buf, sizeof(buf));
	keep_arg(q, "$expand", buf, sizeof(buf));
	size_t n = strlen(buf);
	snprintf(buf + n, sizeof(buf) - n, "$skiptoken=%zu", next);
	return json_object_new_string(buf);
}

/* $skiptoken: where the page starts (an index into the matching chats). */
static bool skip_token(const struct gs_req *q, size_t *skip)
{
	const char *t = gs_req_arg(q, "$skiptoken");
	char *end;
	*skip = 0;
	if (!t)
		return true;
	unsigned long long v = strtoull(t, &end, 10);
	if (!*t || *end || v > 1000000000ULL)
		return false;
	*skip = (size_t)v;
	return true;
}

/* GET /chats and GET /users/{id}/chats: the tenant's chats (of that member). */
static void list_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                        const char *tenant, const char *user)
{
	struct clause cl[FILTER_MAX];
	const char *filter = gs_req_arg(q, "$filter");
	const char *expand = gs_req_arg(q, "$expand");
	int ncl = filter && *filter ? parse_filter(filter, cl) : 0;
	if (ncl < 0) {
		gs_reply_graph_error(r, q, 400, "BadRequest",
		                     "Unsupported $filter '%s' (supported: topic eq, chatType eq, "
		                     "createdDateTime ge|gt|le|lt, joined by and).",
		                     filter);
		return;
	}
	size_t skip, page = (size_t)gs.k.chats_page_size, seen = 0;
	if (!skip_token(q, &skip)) {
		gs_reply_graph_error(r, q, 400, "BadRequest", "Invalid $skiptoken.");
		return;
	}
	settle_locked(q->mono_ms);
	json_object *arr = json_object_new_array();
	json_object *next = NULL;
	for (size_t i = 0; i < chats.n && !next; i++) {
		const struct gs_chat *c = chats.v[i];
		bool ok = strcmp(c->tenant, tenant) == 0 && (!user || has_member(c, user));
		for (int k = 0; ok && k < ncl; k++)
			ok = clause_match(&cl[k], c);
		if (!ok || seen++ < skip)
			continue;
		if (page && json_object_array_length(arr) == page)
			next = next_link(q, seen - 1);
		else
			json_object_array_add(arr,
			                      gs_chat_json(q, c, version, false,
			                                   expand && strstr(expand, "members"),
			                                   EXPAND_MEMBERS_MAX));
	}
	char origin[256], buf[400];
	gs_req_origin(q, origin, sizeof(origin));
	snprintf(buf, sizeof(buf), "%s/%s/$metadata#chats", origin, version);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "@odata.context", json_object_new_string(buf));
	json_object_object_add(o, "@odata.count",
	                       json_object_new_int((int)json_object_array_length(arr)));
	json_object_object_add(o, "value", arr);
	if (next)
		json_object_object_add(o, "@odata.nextLink", next);
	gs_reply_json(r, 200, o);
}

/* Is field one of the comma-separated names of $select? */
static bool selected(const char *select, const char *field)
{
	size_t n = strlen(field);
	for (const char *p = select; p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL) {
		while (*p == ' ')
			p++;
		if (strncmp(p, field, n) == 0 && (p[n] == ',' || p[n] == ' ' || p[n] == '\0'))
			return true;
	}
	return false;
}

/* GET /users/{id | userPrincipalName}: the user, as far as the simulator knows one. */
static void user_get_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                            const char *name)
{
	static const char *const fields[] = {"id", "userPrincipalName", "mail", "displayName"};
	char id[GS_GUID_LEN + 1], origin[256], buf[512];
	const struct gs_user *u = gs_knobs_user(&gs.k, name);
	const char *upn = u ? u->upn : strchr(name, '@') ? name : NULL;
	if (gs_strlist_has(&gs.k.unknown_users, name, true) || (!upn && !gs_is_guid(name))) {
		gs_reply_graph_error(r, q, 404, "Request_ResourceNotFound",
		                     "Resource '%s' does not exist or one of its queried "
		                     "reference-property objects are not present.",
		                     name);
		return;
	}
	if (u)
		memcpy(id, u->id, sizeof(id));
	else if (upn)
		gs_guid_from_name(upn, id);
	else
		for (size_t i = 0; i < sizeof(id); i++)
			id[i] = (char)tolower((unsigned char)name[i]);
	const char *values[] = {id, upn, u && u->mail ? u->mail : upn, NULL};
	const char *select = gs_req_arg(q, "$select");
	json_object *o = json_object_new_object();
	gs_req_origin(q, origin, sizeof(origin));
	snprintf(buf, sizeof(buf), "%s/%s/$metadata#users/$entity", origin, version);
	json_object_object_add(o, "@odata.context", json_object_new_string(buf));
	for (size_t i = 0; i < CP_ARRAY_LEN(fields); i++)
		if (!select || selected(select, fields[i]))
			json_object_object_add(
			    o, fields[i], values[i] ? json_object_new_string(values[i]) : NULL);
	gs_reply_json(r, 200, o);
}

static void chat_get_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                            const char *tenant, const char *id)
{
	void *v;
	const char *expand = gs_req_arg(q, "$expand");
	settle_locked(q->mono_ms);
	const struct gs_chat *c = lh_table_lookup_ex(chat_by_id, id, &v) ? v : NULL;
	if (!c || strcmp(c->tenant, tenant) != 0) {
		gs_reply_graph_error(r, q, 404, "NotFound", "Chat '%s' was not found.", id);
		return;
	}
	gs_reply_json(r, 200,
	              gs_chat_json(q, c, version, true, expand && strstr(expand, "members"), 0));
}

/* GET /chats/{id}/members: every member, in one page (the API takes no query options). */
static void chat_members_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                                const char *tenant, const char *id)
{
	void *v;
	char origin[256], buf[256 + 64 + GS_ID_MAX * 2];
	settle_locked(q->mono_ms);
	const struct gs_chat *c = lh_table_lookup_ex(chat_by_id, id, &v) ? v : NULL;
	if (!c || strcmp(c->tenant, tenant) != 0) {
		gs_reply_graph_error(r, q, 404, "NotFound", "Chat '%s' was not found.", id);
		return;
	}
	gs_req_origin(q, origin, sizeof(origin));
	snprintf(buf, sizeof(buf), "%s/%s/$metadata#chats('%s')/members", origin, version, id);
	json_object *o = json_object_new_object();
	json_object *arr = members_json(c, 0);
	json_object_object_add(o, "@odata.context", json_object_new_string(buf));
	json_object_object_add(o, "@odata.count",
	                       json_object_new_int((int)json_object_array_length(arr)));
	json_object_object_add(o, "value", arr);
	gs_reply_json(r, 200, o);
}

/* A key segment: ('literal') with '' escapes, or /segment. */
static bool take_key(const char **pp, char *out, size_t cap)
{
	const char *p = *pp;
	size_t n = 0;
	if (p[0] == '(' && p[1] == '\'') {
		for (p += 2;; p++) {
			if (!*p)
				return false;
			if (*p == '\'' && p[1] != '\'')
				break;
			if (*p == '\'')
				p++;
			if (n + 1 >= cap)
				return false;
			out[n++] = *p;
		}
		if (p[1] != ')')
			return false;
		p += 2;
	} else if (p[0] == '/') {
		for (p++; *p && *p != '/'; p++) {
			if (n + 1 >= cap)
				return false;
			out[n++] = *p;
		}
	} else {
		return false;
	}
	out[n] = '\0';
	*pp = p;
	return n > 0;
}

/* Dispatches a Graph path (after the version) for an authenticated request. */
static void graph_locked(const struct gs_req *q, struct gs_reply *r, const char *version,
                         const char *rest, const struct gs_token *t)
{
	char a[GS_ID_MAX * 2], b[GS_ID_MAX * 2];
	bool get = strcmp(q->method, "GET") == 0;
	const char *p = rest;
	if (consent_missing_locked(q, r, t, "Chat.ReadBasic.All, Chat.Read.All, Chat.ReadWrite.All"))
		return;
	if (strncmp(p, "chats", 5) == 0 && (p[5] == '\0' || p[5] == '/' || p[5] == '(')) {
		p += 5;
		if (!*p && get) {
			r->route = GS_R_CHATS_LIST;
			list_locked(q, r, version, t->tenant, NULL);
			return;
		}
		if (take_key(&p, a, sizeof(a))) {
			if (!*p && get) {
				r->route = GS_R_CHAT_GET;
				chat_get_locked(q, r, version, t->tenant, a);
				return;
			}
			if (strcmp(p, "/members") == 0 && get) {
				r->route = GS_R_CHAT_MEMBERS;
				chat_members_locked(q, r, version, t->tenant, a);
				return;
			}
			if (strncmp(p, "/operations", 11) == 0 &&
			    (p += 11, take_key(&p, b, sizeof(b))) && !*p && get) {
				r->route = GS_R_OP_GET;
				op_get_locked(q, r, version, t->tenant, a, b);
				return;
			}
		}
	} else if (strncmp(p, "users", 5) == 0) {
		p += 5;
		bool keyed = take_key(&p, a, sizeof(a));
		if (keyed && strcmp(p, "/chats") == 0 && get) {
			r->route = GS_R_USER_CHATS;
			list_locked(q, r, version, t->tenant, a);
			return;
		}
		if (keyed && !*p && get) {
			r->route = GS_R_USER_GET;
			user_get_locked(q, r, version, a);
			return;
		}
	}
	gs_reply_graph_error(r, q, get ? 400 : 405, get ? "BadRequest" : "Request_BadRequest",
	                     "Resource not found for the segment '%s' (method %s).", rest,
	                     q->method);
}

void gs_handle_graph(const struct gs_req *q, struct gs_reply *r, const char *path)
{
	const char *version = NULL;
	r->route = GS_R_OTHER;
	if (strncmp(path, "/v1.0/", 6) == 0)
		version = "v1.0";
	else if (strncmp(path, "/beta/", 6) == 0)
		version = "beta";
	add_graph_headers(q, r);
	if (!version) {
		gs_reply_graph_error(r, q, 400, "BadRequest", "Invalid version: %s", path);
		gs_ledger_count(r->route, r->status);
		return;
	}
	const char *rest = path + 6;
	if (strcmp(rest, "chats") == 0 && strcmp(q->method, "POST") == 0) {
		struct gs_graph_err err;
		r->route = GS_R_CHATS_POST;
		struct gs_chat *c = gs_chat_parse(q, version, &err); /* outside the lock */
		gs_lock();
		r->delay_ms += (int64_t)gs.k.latency_ms;
		post_locked(q, r, version, c, &err);
		gs_unlock();
	} else {
		gs_lock();
		r->delay_ms += (int64_t)gs.k.latency_ms;
		const struct gs_token *t = gs_auth_bearer_locked(q, r);
		if (t)
			graph_locked(q, r, version, rest, t);
		gs_unlock();
	}
	gs_ledger_count(r->route, r->status);
}

json_object *gs_chats_ledger_locked(void)
{
	settle_locked(gs_mono_ms());
	json_object *o = json_object_new_object(), *arr = json_object_new_array();
	for (size_t i = 0; i < chats.n; i++) {
		const struct gs_chat *c = chats.v[i];
		json_object *j = json_object_new_object();
		json_object_object_add(j, "id", json_object_new_string(c->id));
		json_object_object_add(j, "chatType",
		                       json_object_new_string(c->group ? "group" : "oneOnOne"));
		json_object_object_add(j, "topic",
		                       c->topic ? json_object_new_string(c->topic) : NULL);
		json_object *ms = json_object_new_array();
		for (size_t k = 0; k < c->nm; k++) {
			json_object *m = json_object_new_object(), *roles = json_object_new_array();
			json_object_object_add(m, "userId",
			                       json_object_new_string(c->m[k].user_id));
			json_object_array_add(
			    roles, json_object_new_string(c->m[k].guest ? "guest" : "owner"));
			json_object_object_add(m, "roles", roles);
			json_object_object_add(m, "tenantId",
			                       c->m[k].tenant_id[0]
			                           ? json_object_new_string(c->m[k].tenant_id)
			                           : NULL);
			json_object_array_add(ms, m);
		}
		json_object_object_add(j, "members", ms);
		json_object *apps = json_object_new_array();
		for (size_t k = 0; k < c->napps; k++)
			json_object_array_add(apps, json_object_new_string(c->apps[k]));
		json_object_object_add(j, "installedApps", apps);
		json_object_object_add(j, "clientRequestId",
		                       c->crid[0] ? json_object_new_string(c->crid) : NULL);
		json_object_object_add(j, "tenant", json_object_new_string(c->tenant));
		json_object_object_add(j, "createdAt", json_object_new_int64(c->created_wall));
		json_object_object_add(j, "body", json_tokener_parse(c->body));
		json_object_array_add(arr, j);
	}
	json_object_object_add(o, "chats", arr);
	arr = json_object_new_array();
	for (size_t i = 0; i < posts.n; i++) {
		json_object *j = json_object_new_object();
		json_object_object_add(j, "clientRequestId",
		                       posts.v[i].crid[0] ? json_object_new_string(posts.v[i].crid)
		                                          : NULL);
		json_object_object_add(j, "status", json_object_new_int(posts.v[i].status));
		if (posts.v[i].fault)
			json_object_object_add(j, "fault",
			                       json_object_new_string(posts.v[i].fault));
		json_object_object_add(j, "at", json_object_new_int64(posts.v[i].at));
		json_object_array_add(arr, j);
	}
	json_object_object_add(o, "chat_posts", arr);
	json_object_object_add(o, "duplicate_group_chats",
	                       json_object_new_int64((int64_t)duplicate_group_chats));
	return o;
}

json_object *gs_ops_ledger_locked(void)
{
	int64_t now = gs_mono_ms();
	json_object *arr = json_object_new_array();
	for (size_t i = 0; i < ops.n; i++) {
		const struct op *o = ops.v[i];
		json_object *j = json_object_new_object(), *polls = json_object_new_array();
		json_object_object_add(j, "id", json_object_new_string(o->id));
		json_object_object_add(j, "chatId", json_object_new_string(o->chat_id));
		json_object_object_add(j, "status",
		                       json_object_new_string(op_status(o, now, NULL)));
		for (size_t k = 0; k < o->npolls; k++)
			json_object_array_add(polls, json_object_new_int64(o->polls[k]));
		json_object_object_add(j, "polls", polls);
		json_object_array_add(arr, j);
	}
	return arr;
}
