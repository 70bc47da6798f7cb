/*
 * auth.h - OAuth2 access tokens for Microsoft Graph, one cache per credential profile.
 *
 * One background thread (a libcurl multi handle, one easy handle per profile) fetches and
 * refreshes tokens; the daemon's HTTP workers only read the cache under a mutex and never
 * wait for the network. A profile's token is fetched on first demand (profile 0 eagerly at
 * start) and refreshed ahead of expiry. Transient token endpoint failures are retried with
 * backoff and reported as AUTH_PENDING; only permanent credential errors give AUTH_FAILED.
 * Tokens, secrets and assertions are never logged. See docs/auth.md.
 */
#ifndef CHATPROV_AUTH_H
#define CHATPROV_AUTH_H

#include "cfg.h"
#include "common.h"
#include "tokenreq.h"

/* A buffer of this size always holds a token for auth_get_token. */
#define AUTH_TOKEN_BUF (TOKENREQ_TOKEN_MAX + 1)

struct auth;

enum auth_status {
	AUTH_OK,      /* buf holds a valid token */
	AUTH_PENDING, /* a fetch is under way or backing off; wait for the notify callback */
	AUTH_FAILED,  /* permanent credential error: see auth_last_error */
};

struct auth_stats {
	uint64_t refreshes;       /* tokens obtained */
	uint64_t failures;        /* failed token requests, transient or permanent */
	int64_t expires_epoch_ms; /* expiry of the cached token, 0 if none */
};

bool auth_new(const struct cfg *cfg, struct auth **out, char *err, size_t errcap) CP_MUSTCHECK;
/* Starts the refresh thread; profile 0 is fetched at once. */
bool auth_start(struct auth *a) CP_MUSTCHECK;
/*
 * Stops and joins the refresh thread: once it returns, the notify callback never runs again,
 * so what the callback touches may be freed. Tokens stay readable. NULL and repeats are fine.
 */
void auth_stop(struct auth *a);
/* Stops the thread (auth_stop), wipes secrets and tokens. NULL is fine. */
void auth_free(struct auth *a);

/*
 * Copies profile's token into buf (cap >= AUTH_TOKEN_BUF is always enough). Never blocks on
 * the network. AUTH_PENDING starts a fetch if none is under way.
 */
enum auth_status auth_get_token(struct auth *a, size_t profile, char *buf, size_t cap,
                                int64_t *expires_epoch_ms);
/* Graph answered 401 to `token`: if it is still the cached token, drop it and refetch now. */
void auth_invalidate(struct auth *a, size_t profile, const char *token);
/* cb(arg) runs on the refresh thread after a profile obtained a token or failed for good. */
void auth_set_notify(struct auth *a, void (*cb)(void *arg), void *arg);
bool auth_profile_ready(struct auth *a, size_t profile);
/* The last failure, with AADSTS code and a hint; "" if the profile has not failed. */
void auth_last_error(struct auth *a, size_t profile, char *buf, size_t cap);
void auth_get_stats(struct auth *a, size_t profile, struct auth_stats *out);

/*
 * SIGHUP: use new_cfg from the next token request on (secrets, keys and certificates are
 * re-read then). Profiles are matched by index; the count and names must not change. Cached
 * tokens stay valid; failed profiles are retried at once. The caller frees the old cfg after
 * this returns: the refresh thread keeps no pointer into it.
 */
bool auth_reload(struct auth *a, const struct cfg *new_cfg) CP_MUSTCHECK;

#endif
