/*
 * gsim.h - graph-sim: a Microsoft Graph + Entra ID simulator for tests and benchmarks.
 *
 * One process, libmicrohttpd with a small epoll thread pool (HTTP/1.1), and with --http2
 * an HTTP/2-over-TLS front of its own (h2.c: nghttp2, OpenSSL, one epoll thread) that
 * routes through the same gs_serve. All shared state (knobs,
 * tokens, chats, operations, ledger, throttling buckets) lives in one `struct gs_state`
 * behind one mutex: requests are short, so one lock keeps the invariants simple and is
 * not the bottleneck. Handlers build a `struct gs_reply`; http.c turns it into an MHD
 * response, possibly after a delay (latency, hang) served by suspend/resume, so a slow
 * answer never ties up a worker thread.
 */
#ifndef GSIM_H
#define GSIM_H

#include <json-c/json.h>
#include <openssl/evp.h>
#include <pthread.h>

#include "../../lib/common.h"

#define GS_BODY_MAX    (1024 * 1024) /* request bodies above this are refused with 413 */
#define GS_GUID_LEN    36
#define GS_ID_MAX      160 /* chat ids, operation ids */
#define GS_CRID_MAX    128 /* client-request-id values kept */
#define GS_REPLY_HDRS  12
#define GS_MEMBERS_MAX 250 /* Teams' group chat size limit */

/* Routes, for the ledger's request counts. */
enum gs_route {
	GS_R_TOKEN,
	GS_R_MI,
	GS_R_CHATS_POST,
	GS_R_CHATS_LIST,
	GS_R_CHAT_GET,
	GS_R_OP_GET,
	GS_R_USER_CHATS,
	GS_R_USER_GET,
	GS_R_CHAT_MEMBERS,
	GS_R_OTHER,
	GS_R_COUNT
};

/* Pseudo-statuses for requests answered without a status line. */
#define GS_ST_RESET 0
#define GS_ST_HANG  1

enum gs_retry_mode { GS_RA_INTEGER, GS_RA_FRACTIONAL, GS_RA_ABSENT };

enum gs_hostile {
	GS_H_NONE,
	GS_H_OVERSIZED_BODY,
	GS_H_INVALID_JSON,
	GS_H_NO_ID,
	GS_H_ENDLESS_BODY,
	GS_H_FOREIGN_LOCATION,
	GS_H_RETRY_AFTER_YEAR,
	GS_H_FOREIGN_NEXT_LINK,
};

enum gs_grant { GS_G_SECRET, GS_G_CERT, GS_G_FEDERATED, GS_G_MI, GS_G_COUNT };

struct gs_strlist {
	char **v;
	size_t n;
};

/* A registered application (service principal) of one tenant. */
struct gs_client {
	char *tenant;                      /* as configured, e.g. contoso.onmicrosoft.com */
	char tenant_guid[GS_GUID_LEN + 1]; /* given or derived from the name */
	char *client_id;
	char *secret; /* NULL: no secret credential */
	char *cert_file;
	EVP_PKEY *cert_key;                /* public key of the certificate, NULL without one */
	unsigned char x5t[20], x5t256[32]; /* certificate thumbprints */
	struct gs_strlist federated;       /* accepted federated assertions */
};

/* A user Teams does not know until a while after the knob was set (replication delay). */
struct gs_late_user {
	char *user; /* id or UPN, lower case */
	int64_t known_at_mono;
};

/* A directory user whose UPN and mail may differ (knob "users"). */
struct gs_user {
	char *upn;  /* lower case */
	char *mail; /* as configured; the UPN when not */
	char id[GS_GUID_LEN + 1];
};

/* Every knob of POST /_sim/config (see docs/graph-sim.md). */
struct gs_knobs {
	struct gs_client *clients;
	size_t n_clients;
	struct gs_strlist federated; /* accepted for every client */
	char *expected_scope;        /* NULL: any cloud's .default */
	char *mi_client_id;          /* managed identity's client id */
	double token_lifetime_s;
	struct gs_strlist unknown_users; /* lower case */
	struct gs_late_user *late_users;
	size_t n_late_users;
	struct gs_strlist consent_missing; /* tenants (names or GUIDs) without admin consent */
	struct gs_user *users;
	size_t n_users;
	double chats_page_size; /* chat lists: items per page, 0 = one page */
	double clock_skew_s;    /* added to the chats' createdDateTime */
	double limit_per_tenant, limit_global, limit_window_s;
	enum gs_retry_mode retry_mode;
	double fault_503_rate, fault_503_retry_after_s, fault_504_rate, fault_500_rate;
	double fault_reset_rate, fault_hang_rate, hang_s, latency_ms, fault_created_504_rate;
	double token_fault_503_rate;
	double cut_busiest_h2_every_s; /* HTTP/2: close the busiest connection, no GOAWAY */
	double op_in_progress_after_s, op_done_after_s, op_fail_rate;
	enum gs_hostile hostile;
	double hostile_rate;
	char *foreign_root; /* foreign_location's "other host"; NULL: graph.attacker.example */
};

/* What a handler answers; http.c sends it. */
enum gs_stream { GS_STREAM_NONE, GS_STREAM_OVERSIZED, GS_STREAM_ENDLESS };
struct gs_reply {
	unsigned status;
	char *body; /* malloc'd, owned; NULL: empty */
	size_t len;
	const char *content_type;
	char hdr_name[GS_REPLY_HDRS][32];
	char *hdr_value[GS_REPLY_HDRS];
	int n_hdrs;
	int64_t delay_ms; /* answer after this long (suspend/resume) */
	bool close;       /* after the delay, close without answering */
	enum gs_stream stream;
	enum gs_route route;
	char request_id[GS_GUID_LEN + 1];
};

/* What handlers see of a request. */
struct gs_req {
	void *conn; /* struct MHD_Connection *, NULL over HTTP/2 */
	void *h2;   /* h2.c's stream over HTTP/2, else NULL */
	const char *method;
	const char *path;
	const char *body;
	size_t body_len;
	const char *crid; /* client-request-id header, NULL if absent */
	int64_t mono_ms, wall_ms;
};

/* util.c */
int64_t gs_mono_ms(void);
int64_t gs_wall_ms(void);
void gs_fmt_time(int64_t wall_ms, char *buf, size_t cap);
bool gs_parse_time(const char *s, int64_t *wall_ms) CP_MUSTCHECK;
uint64_t gs_rand_u64(void);
double gs_rand_unit(void);
bool gs_roll(double rate);
void gs_guid_random(char out[GS_GUID_LEN + 1]);
void gs_guid_from_name(const char *name, char out[GS_GUID_LEN + 1]);
bool gs_is_guid(const char *s);
bool gs_token_random(char *out, size_t cap) CP_MUSTCHECK;
bool gs_b64url_decode(const char *in, size_t len, unsigned char *out, size_t cap,
                      size_t *out_len) CP_MUSTCHECK;
void gs_b64url_encode(const unsigned char *in, size_t len, char *out, size_t cap);
char *gs_strdup_lower(const char *s);
void gs_strlist_free(struct gs_strlist *l);
bool gs_strlist_has(const struct gs_strlist *l, const char *s, bool nocase);
/* Finds `key` in an application/x-www-form-urlencoded body; decodes into out. */
bool gs_form_get(const char *body, size_t len, const char *key, char *out, size_t cap);
char *gs_json_dump(json_object *o, size_t *len);
/* Appends a request body chunk (NUL-terminated); past GS_BODY_MAX only sets *too_big.
 * false: out of memory. */
bool gs_body_append(char **body, size_t *len, size_t *cap, bool *too_big, const char *data,
                    size_t n) CP_MUSTCHECK;

/* http.c */
bool gs_http_start(const char *listen, const char *cert, const char *key, unsigned threads,
                   char *url, size_t url_cap) CP_MUSTCHECK;
void gs_http_stop(void);
void gs_reply_header(struct gs_reply *r, const char *name, const char *fmt, ...) CP_PRINTF(3, 4);
void gs_reply_json(struct gs_reply *r, unsigned status, json_object *o);
void gs_reply_graph_error(struct gs_reply *r, const struct gs_req *q, unsigned status,
                          const char *code, const char *fmt, ...) CP_PRINTF(5, 6);
const char *gs_req_header(const struct gs_req *q, const char *name);
const char *gs_req_arg(const struct gs_req *q, const char *name);
/* "http://host:port" of the request, from its Host header. */
void gs_req_origin(const struct gs_req *q, char *buf, size_t cap);
/* Computes the reply of a complete request (routing, 413 for a body over GS_BODY_MAX). */
void gs_serve(struct gs_req *q, struct gs_reply *r, bool too_big);
void gs_reply_free(struct gs_reply *r);
/* The hostile streamed bodies from `pos`: bytes written, *end once the body is complete. */
size_t gs_stream_fill(enum gs_stream kind, uint64_t pos, char *buf, size_t max, bool *end);
struct sockaddr_in;
bool gs_parse_listen(const char *listen, struct sockaddr_in *sa, char host[64]) CP_MUSTCHECK;

/* h2.c: the HTTP/2 front (--http2): TLS, ALPN h2 only, one epoll thread. */
bool gs_h2_start(const char *addr, const char *cert, const char *key, char *url,
                 size_t url_cap) CP_MUSTCHECK;
void gs_h2_stop(void);
const char *gs_h2_header(void *stream, const char *name);
const char *gs_h2_arg(void *stream, const char *name);

/* knobs.c */
/* Sets the defaults into gs.k. */
bool gs_knobs_init(void) CP_MUSTCHECK;
void gs_knobs_shutdown(void);
/* Merges a JSON object of knobs into the running ones (all or nothing). */
bool gs_knobs_apply(json_object *patch, char *err, size_t errcap) CP_MUSTCHECK;
/* The effective knobs, defaults included. */
json_object *gs_knobs_to_json(void);
/* Under the state lock: the configured user with that UPN or object id, or NULL. */
const struct gs_user *gs_knobs_user(const struct gs_knobs *k, const char *upn_or_id);
const struct gs_client *gs_knobs_client(const struct gs_knobs *k, const char *tenant,
                                        const char *client_id);
bool gs_knobs_tenant_known(const struct gs_knobs *k, const char *tenant, const char **canonical,
                           const char **guid);

void gs_knobs_free_struct(struct gs_knobs *k);

/* auth.c: token store and endpoints */
struct gs_token {
	char value[64];
	char *tenant; /* canonical name: throttling and chats belong to it */
	char tenant_guid[GS_GUID_LEN + 1];
	int64_t expires_mono;
};
bool gs_auth_init(void) CP_MUSTCHECK;
void gs_auth_shutdown(void);
void gs_handle_token(const struct gs_req *q, struct gs_reply *r, const char *tenant);
void gs_handle_mi(const struct gs_req *q, struct gs_reply *r);
/* Under the state lock: every access token still in the store (the ledger's "issued_tokens"). */
json_object *gs_auth_tokens_ledger_locked(void);
/* Under the state lock: the live bearer token of the request, or NULL (401 written). */
const struct gs_token *gs_auth_bearer_locked(const struct gs_req *q, struct gs_reply *r);

/* jwt.c: client assertion verification; returns the AADSTS code, 0 when valid. */
bool gs_jwt_init(void) CP_MUSTCHECK;
void gs_jwt_shutdown(void);
int gs_jwt_verify_locked(const struct gs_client *c, const char *jwt, const char *aud_path,
                         int64_t now_s, char *msg, size_t msgcap);

/* A chat as created (or to be created by an operation). */
struct gs_member {
	char *user_id;              /* as bound: GUID or UPN (decoded) */
	char guid[GS_GUID_LEN + 1]; /* the GUID, derived for a UPN */
	bool guest;
	char tenant_id[GS_GUID_LEN + 1]; /* "" = the chat's tenant */
};
struct gs_chat {
	char id[GS_ID_MAX];
	bool group;
	char *topic;
	struct gs_member *m;
	size_t nm;
	char apps[1][GS_GUID_LEN + 1];
	size_t napps;
	char crid[GS_CRID_MAX]; /* "" without client-request-id */
	char *tenant;
	char tenant_guid[GS_GUID_LEN + 1];
	int64_t created_wall;
	char *body; /* the request body as received */
	char *pair_key;
};

/* chatval.c: Graph's validation of a POST /chats body. */
struct gs_graph_err {
	unsigned status;
	const char *code;
	char msg[400];
};
struct gs_chat *gs_chat_parse(const struct gs_req *q, const char *version,
                              struct gs_graph_err *err);
void gs_chat_free(struct gs_chat *c);

/* chats.c */
void gs_handle_graph(const struct gs_req *q, struct gs_reply *r, const char *path);
bool gs_chats_init(void) CP_MUSTCHECK;
void gs_chats_shutdown(void);
json_object *gs_chats_ledger_locked(void);
json_object *gs_ops_ledger_locked(void);
void gs_chats_reset_locked(void);

/* ledger.c: counters, throttling */
void gs_ledger_count(enum gs_route route, unsigned status);
/* Connections accepted (both fronts) and HTTP/2 connections cut by the fault knob. */
void gs_ledger_connection_accepted(void);
void gs_ledger_connection_cut(void);
void gs_ledger_grant_locked(enum gs_grant g);
void gs_ledger_failure_locked(int aadsts);
/* Throttling for POST /chats: true to admit; else fills retry_after_s. */
bool gs_throttle_admit_locked(const char *tenant, int64_t now_ms, double *retry_after_s);
void gs_throttle_reset_locked(void);
void gs_throttle_note_retry_locked(const char *tenant, int64_t until_ms);
/* Counts a request arriving inside a Retry-After the tenant was given, and records it
 * (client-request-id, how long after the Retry-After was given, how much was left). */
void gs_throttle_check_violation_locked(const char *tenant, const char *crid, int64_t now_ms);
void gs_ledger_reset_locked(void);
json_object *gs_ledger_json_locked(void);
void gs_handle_sim(const struct gs_req *q, struct gs_reply *r, const char *rest);
/* Formats a Retry-After value by the configured mode; false when it is absent. */
bool gs_retry_after_value(double seconds, char *buf, size_t cap);

/* The one shared state. */
struct gs_state {
	pthread_mutex_t mu;
	struct gs_knobs k;
};
extern struct gs_state gs;

static inline void gs_lock(void)
{
	pthread_mutex_lock(&gs.mu);
}
static inline void gs_unlock(void)
{
	pthread_mutex_unlock(&gs.mu);
}

#endif
