/*
 * chatreq.h - the POST /chats request chatprovd sends for one valid event: where it goes,
 * its client-request-id and its body. One builder, used by the daemon's pipeline and
 * workers and by `chatprovctl plan`, so that what plan prints is what Graph receives.
 */
#ifndef CHATPROV_CHATREQ_H
#define CHATPROV_CHATREQ_H

#include "cfg.h"
#include "common.h"
#include "event.h"

#define CHATREQ_URL_MAX 2048 /* JOB_URL_MAX: the roots are copied into jobs' URL buffers */

/* The URL roots a configuration gives. */
struct chatreq_roots {
	char version_root[CHATREQ_URL_MAX]; /* where requests go: {base_url}/{version} */
	char bind_root[CHATREQ_URL_MAX];    /* what bodies name: {graph_root}/{version} */
	char chats_url[CHATREQ_URL_MAX];    /* {version_root}/chats */
};

/* False when a root does not fit CHATREQ_URL_MAX. */
bool chatreq_roots(const struct cfg *cfg, struct chatreq_roots *out) CP_MUSTCHECK;

/* The event validator's limits as the configuration sets them. */
struct event_limits chatreq_event_limits(const struct cfg *cfg);

/* What the daemon sends for one event. */
struct chatreq {
	size_t tenant;                /* credential profile index */
	char client_request_id[37];   /* UUIDv5 of the event id */
	char *body;                   /* malloc'd JSON text */
};

/*
 * Resolves the event's tenant profile, derives its client-request-id and builds the body
 * naming bind_root. On failure (an unknown tenant profile, out of memory) reason says why
 * and out->body is NULL: the event is rejected with that reason.
 */
bool chatreq_prepare(const struct cfg *cfg, const char *bind_root, const struct event_request *ev,
                     struct chatreq *out, char *reason, size_t cap) CP_MUSTCHECK;

#endif
