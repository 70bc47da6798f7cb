/*
 * auth.c - token caches per credential profile and the one refresh thread behind them.
 *
 * Locking: everything a worker can see (token, expiry, state, errors, stats) lives in
 * struct auth_profile under auth.mu. The refresh thread copies what it needs from the cfg
 * into a snapshot under the lock and then talks to the network without it, so workers never
 * wait for I/O and auth_reload can swap the cfg at any time. The notify callback runs
 * without the lock held: it wakes worker loops, which may be calling auth_get_token.
 */
#include "auth.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cptime.h"
#include "log.h"
#include "tokenreq.h"

#define NOT_SCHEDULED      INT64_MAX
#define BACKOFF_MIN_MS     500
#define BACKOFF_MAX_MS     30000
#define FAILED_RETRY_MS    30000 /* plus up to as much again of jitter */
#define INVALIDATE_GAP_MS  1000  /* a 401 storm cannot turn into a token request storm */
#define EXPIRY_MARGIN_MS   2000  /* stop handing out a token this long before it expires */
#define DEFAULT_CONNECT_MS 10000
#define DEFAULT_REQUEST_MS 30000

struct auth_profile {
	/* Guarded by auth.mu. */
	char token[AUTH_TOKEN_BUF]; /* "" = none */
	int64_t expires_epoch_ms, expires_mono_ms, lifetime_ms, obtained_mono_ms;
	bool demanded;       /* somebody asked: keep it fresh from now on */
	bool in_flight;      /* a request is on the wire (at most one per profile) */
	bool failed;         /* last attempt failed permanently */
	int64_t next_due_ms; /* monotonic time of the next request, NOT_SCHEDULED if none */
	unsigned backoff_n;
	uint64_t gen; /* reload generation the in-flight request was built with */
	char last_error[TOKENREQ_ERROR_MAX];
	char logged_key[128]; /* the failure last logged: each distinct one is logged once */
	uint64_t refreshes, failures;

	/* Owned by the refresh thread. */
	struct tokenreq *req;
};

struct auth {
	pthread_mutex_t mu;
	const struct cfg *cfg;
	uint64_t gen;
	size_t n;
	struct auth_profile *p;
	void (*notify)(void *arg);
	void *notify_arg;
	bool stop, started;
	pthread_t thread;
	/* Owned by the refresh thread. */
	CURLM *multi;
	struct tokenreq_params snap; /* what the request being started needs from the cfg */
	struct tokenreq_response resp;
};

/* ---- small helpers ---------------------------------------------------------------------- */

static uint32_t random_u32(void)
{
	uint32_t r;
	if (RAND_bytes((unsigned char *)&r, sizeof r) != 1)
		r = (uint32_t)cptime_mono_ms() * 2654435761u;
	return r;
}

/* Exponential backoff with jitter: half fixed, half random, within 0.5 s .. 30 s. */
static int64_t backoff_ms(unsigned n)
{
	int64_t d = BACKOFF_MIN_MS;
	for (unsigned i = 0; i < n && d < BACKOFF_MAX_MS; i++)
		d *= 2;
	d = d < BACKOFF_MAX_MS ? d : BACKOFF_MAX_MS;
	d = d / 2 + (int64_t)(random_u32() % (uint32_t)(d / 2 + 1));
	return d < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : d;
}

/*
 * When to refresh a token of lifetime L: token_refresh_ahead_s before expiry, but between
 * 50% and 80% of L, so short lifetimes (tests, 10 s) are still refreshed ahead of time.
 */
static int64_t refresh_delay_ms(int64_t lifetime_ms, double ahead_s)
{
	int64_t d = lifetime_ms - (int64_t)(ahead_s * 1000.0);
	int64_t lo = lifetime_ms / 2, hi = lifetime_ms * 8 / 10;
	return d < lo ? lo : d > hi ? hi : d;
}

static bool token_valid(const struct auth_profile *p, int64_t now_ms)
{
	int64_t margin = p->lifetime_ms / 10;
	margin = margin < EXPIRY_MARGIN_MS ? margin : EXPIRY_MARGIN_MS;
	return p->token[0] && now_ms < p->expires_mono_ms - margin;
}

static void drop_token(struct auth_profile *p)
{
	OPENSSL_cleanse(p->token, sizeof p->token);
	p->expires_epoch_ms = p->expires_mono_ms = p->lifetime_ms = 0;
}

static void wake(struct auth *a)
{
	if (a->multi)
		curl_multi_wakeup(a->multi);
}

static void log_failure(const char *name, const struct tokenreq_outcome *o)
{
	struct log_ctx ctx = {.tenant = name};
	if (o->kind == TOKENREQ_TRANSIENT)
		log_with(LOG_LVL_WARNING, &ctx,
		         "auth: profile '%s': token request failed, retrying with backoff: %s",
		         name, o->msg);
	else
		log_with(LOG_LVL_ERROR, &ctx,
		         "auth: profile '%s': credentials rejected (retried every 30-60 s or on "
		         "reload): %s",
		         name, o->msg);
}

static void apply_success(struct auth *a, struct auth_profile *p, const char *name,
                          const struct tokenreq_response *r)
{
	int64_t now = cptime_mono_ms();
	OPENSSL_cleanse(p->token, sizeof p->token);
	memcpy(p->token, r->access_token, strlen(r->access_token) + 1);
	p->lifetime_ms = r->expires_in_s * 1000;
	p->obtained_mono_ms = now;
	p->expires_mono_ms = now + p->lifetime_ms;
	p->expires_epoch_ms = cptime_wall_ms() + p->lifetime_ms;
	p->failed = false;
	p->backoff_n = 0;
	p->last_error[0] = '\0';
	p->refreshes++;
	p->next_due_ms = now + refresh_delay_ms(p->lifetime_ms, a->cfg->token_refresh_ahead_s);
	if (p->logged_key[0])
		log_with(LOG_LVL_NOTICE, &(struct log_ctx){.tenant = name},
		         "auth: profile '%s': token acquired again", name);
	else
		log_debug("auth: profile '%s': token acquired, expires in %lld s", name,
		          (long long)r->expires_in_s);
	p->logged_key[0] = '\0';
}

/* Records an outcome; returns whether waiters must be told (token acquired or failed). */
static bool apply_outcome(struct auth *a, size_t i, const struct tokenreq_outcome *o,
                          const struct tokenreq_response *r)
{
	struct auth_profile *p = &a->p[i];
	const char *name = a->cfg->tenants[i].name;
	int64_t now = cptime_mono_ms();
	p->in_flight = false;
	if (o->kind == TOKENREQ_OK && r) {
		apply_success(a, p, name, r);
		return true;
	}
	p->failures++;
	snprintf(p->last_error, sizeof p->last_error, "%s", o->msg);
	if (strcmp(p->logged_key, o->key) != 0) {
		log_failure(name, o);
		snprintf(p->logged_key, sizeof p->logged_key, "%s", o->key);
	}
	if (o->kind == TOKENREQ_TRANSIENT) {
		p->next_due_ms = now + backoff_ms(p->backoff_n++);
		return false;
	}
	p->failed = true;
	p->backoff_n = 0;
	/* Built from a cfg that a reload has replaced since: try the new one at once. */
	p->next_due_ms = p->gen != a->gen
	                     ? now
	                     : now + FAILED_RETRY_MS + (int64_t)(random_u32() % FAILED_RETRY_MS);
	return true;
}

static void complete(struct auth *a, size_t i, const struct tokenreq_outcome *o,
                     const struct tokenreq_response *r)
{
	pthread_mutex_lock(&a->mu);
	bool tell = apply_outcome(a, i, o, r);
	void (*cb)(void *) = a->notify;
	void *arg = a->notify_arg;
	pthread_mutex_unlock(&a->mu);
	if (tell && cb)
		cb(arg);
}

/* ---- the refresh thread ---------------------------------------------------------------------- */

static long ms_or(double s, long dflt)
{
	return s > 0 && s < 86400 ? (long)(s * 1000.0) : dflt;
}

/* Under the lock: the first profile due now (marked in flight, snapshot taken), or a->n. */
static size_t take_due(struct auth *a, int *timeout_ms)
{
	int64_t now = cptime_mono_ms(), wait = 60000;
	for (size_t i = 0; i < a->n; i++) {
		struct auth_profile *p = &a->p[i];
		if (p->in_flight || p->next_due_ms == NOT_SCHEDULED)
			continue;
		if (p->next_due_ms <= now) {
			const struct cfg *c = a->cfg;
			a->snap.t = c->tenants[i];
			snprintf(a->snap.scope, sizeof a->snap.scope, "%s", c->graph.scope);
			snprintf(a->snap.ca_file, sizeof a->snap.ca_file, "%s", c->graph.ca_file);
			a->snap.connect_ms = ms_or(c->graph.connect_timeout_s, DEFAULT_CONNECT_MS);
			a->snap.request_ms = ms_or(c->graph.request_timeout_s, DEFAULT_REQUEST_MS);
			p->gen = a->gen;
			p->in_flight = true;
			p->next_due_ms = NOT_SCHEDULED;
			return i;
		}
		wait = p->next_due_ms - now < wait ? p->next_due_ms - now : wait;
	}
	*timeout_ms = (int)wait;
	return a->n;
}

static void start_request(struct auth *a, size_t i)
{
	struct auth_profile *p = &a->p[i];
	struct tokenreq_outcome o;
	if (!tokenreq_prepare(p->req, &a->snap, &o))
		goto fail;
	if (curl_multi_add_handle(a->multi, tokenreq_easy(p->req)) != CURLM_OK) {
		tokenreq_fail_local(p->req, "cannot start the token request", &o);
		goto fail;
	}
	return;
fail:
	complete(a, i, &o, NULL);
}

static void finish_request(struct auth *a, struct auth_profile *p, CURLcode rc)
{
	struct tokenreq_outcome o;
	struct tokenreq_response *r = &a->resp;
	tokenreq_finish(p->req, rc, r, &o);
	complete(a, (size_t)(p - a->p), &o, r);
	OPENSSL_cleanse(r->access_token, sizeof r->access_token);
}

static void drain_done(struct auth *a)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(a->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		/* The message dies with remove_handle: copy what we need first. */
		CURL *e = m->easy_handle;
		CURLcode rc = m->data.result;
		struct auth_profile *p = NULL;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&p);
		curl_multi_remove_handle(a->multi, e);
		if (p)
			finish_request(a, p, rc);
	}
}

static void *refresh_main(void *arg)
{
	struct auth *a = arg;
	for (;;) {
		int timeout = 0, running = 0;
		pthread_mutex_lock(&a->mu);
		bool stop = a->stop;
		size_t due = stop ? a->n : take_due(a, &timeout);
		pthread_mutex_unlock(&a->mu);
		if (stop)
			break;
		if (due < a->n) {
			start_request(a, due);
			continue;
		}
		/* Wakes for I/O, curl's own timers, the next due refresh or curl_multi_wakeup. */
		if (curl_multi_poll(a->multi, NULL, 0, timeout, NULL) != CURLM_OK ||
		    curl_multi_perform(a->multi, &running) != CURLM_OK)
			log_error("auth: libcurl multi handle failed");
		drain_done(a);
	}
	return NULL;
}

/* ---- public API ---------------------------------------------------------------------------- */

bool auth_new(const struct cfg *cfg, struct auth **out, char *err, size_t errcap)
{
	struct auth *a = NULL;
	if (!cfg || cfg->n_tenants == 0 || cfg->n_tenants > CFG_MAX_TENANTS) {
		snprintf(err, errcap, "auth: the configuration has no credential profile");
		return false;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		snprintf(err, errcap, "auth: curl_global_init failed");
		return false;
	}
	a = calloc(1, sizeof *a);
	if (!a || !(a->p = calloc(cfg->n_tenants, sizeof *a->p)) ||
	    !(a->multi = curl_multi_init())) {
		snprintf(err, errcap, "auth: out of memory");
		goto fail;
	}
	if (pthread_mutex_init(&a->mu, NULL) != 0) {
		snprintf(err, errcap, "auth: pthread_mutex_init failed");
		goto fail;
	}
	a->cfg = cfg;
	a->n = cfg->n_tenants;
	for (size_t i = 0; i < a->n; i++) {
		a->p[i].next_due_ms = NOT_SCHEDULED;
		if (!tokenreq_new(&a->p[i], &a->p[i].req)) {
			snprintf(err, errcap, "auth: out of memory");
			auth_free(a); /* the thread never ran; it cleans up curl too */
			return false;
		}
	}
	*out = a;
	return true;
fail:
	if (a) {
		if (a->multi)
			curl_multi_cleanup(a->multi);
		free(a->p);
		free(a);
	}
	curl_global_cleanup();
	return false;
}

bool auth_start(struct auth *a)
{
	pthread_mutex_lock(&a->mu);
	a->p[0].demanded = true;
	a->p[0].next_due_ms = cptime_mono_ms();
	pthread_mutex_unlock(&a->mu);
	int rc = pthread_create(&a->thread, NULL, refresh_main, a);
	if (rc != 0) {
		log_error("auth: cannot start the token refresh thread: %s", strerror(rc));
		return false;
	}
	a->started = true;
	return true;
}

void auth_stop(struct auth *a)
{
	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->stop = true;
	pthread_mutex_unlock(&a->mu);
	wake(a);
	if (a->started)
		pthread_join(a->thread, NULL);
	a->started = false;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	auth_stop(a);
	for (size_t i = 0; i < a->n; i++) {
		struct auth_profile *p = &a->p[i];
		if (p->req && p->in_flight)
			curl_multi_remove_handle(a->multi, tokenreq_easy(p->req));
		tokenreq_free(p->req);
	}
	OPENSSL_cleanse(a->p, a->n * sizeof *a->p);
	OPENSSL_cleanse(&a->resp, sizeof a->resp);
	free(a->p);
	curl_multi_cleanup(a->multi);
	pthread_mutex_destroy(&a->mu);
	free(a);
	curl_global_cleanup();
}

enum auth_status auth_get_token(struct auth *a, size_t profile, char *buf, size_t cap,
                                int64_t *expires_epoch_ms)
{
	if (profile >= a->n)
		return AUTH_FAILED;
	enum auth_status st = AUTH_PENDING;
	bool kick = false;
	pthread_mutex_lock(&a->mu);
	struct auth_profile *p = &a->p[profile];
	int64_t now = cptime_mono_ms();
	if (token_valid(p, now)) {
		size_t len = strlen(p->token);
		st = len < cap ? AUTH_OK : AUTH_FAILED; /* cap < AUTH_TOKEN_BUF: a caller bug */
		if (st == AUTH_OK) {
			memcpy(buf, p->token, len + 1);
			if (expires_epoch_ms)
				*expires_epoch_ms = p->expires_epoch_ms;
		}
	} else if (p->failed) {
		st = AUTH_FAILED;
	} else {
		p->demanded = true;
		if (!p->in_flight && p->next_due_ms == NOT_SCHEDULED) {
			p->next_due_ms = now;
			kick = true;
		}
	}
	pthread_mutex_unlock(&a->mu);
	if (kick)
		wake(a);
	return st;
}

void auth_invalidate(struct auth *a, size_t profile, const char *token)
{
	if (profile >= a->n || !token)
		return;
	bool kick = false;
	pthread_mutex_lock(&a->mu);
	struct auth_profile *p = &a->p[profile];
	if (p->token[0] && strcmp(p->token, token) == 0) {
		drop_token(p);
		if (!p->in_flight) {
			int64_t now = cptime_mono_ms(),
			        due = p->obtained_mono_ms + INVALIDATE_GAP_MS;
			due = due > now ? due : now;
			p->next_due_ms = due < p->next_due_ms ? due : p->next_due_ms;
			kick = true;
		}
	}
	pthread_mutex_unlock(&a->mu);
	if (kick)
		wake(a);
}

void auth_set_notify(struct auth *a, void (*cb)(void *arg), void *arg)
{
	pthread_mutex_lock(&a->mu);
	a->notify = cb;
	a->notify_arg = arg;
	pthread_mutex_unlock(&a->mu);
}

bool auth_profile_ready(struct auth *a, size_t profile)
{
	if (profile >= a->n)
		return false;
	pthread_mutex_lock(&a->mu);
	bool ok = token_valid(&a->p[profile], cptime_mono_ms());
	pthread_mutex_unlock(&a->mu);
	return ok;
}

void auth_last_error(struct auth *a, size_t profile, char *buf, size_t cap)
{
	if (!cap)
		return;
	buf[0] = '\0';
	if (profile >= a->n)
		return;
	pthread_mutex_lock(&a->mu);
	snprintf(buf, cap, "%s", a->p[profile].last_error);
	pthread_mutex_unlock(&a->mu);
}

void auth_get_stats(struct auth *a, size_t profile, struct auth_stats *out)
{
	memset(out, 0, sizeof *out);
	if (profile >= a->n)
		return;
	pthread_mutex_lock(&a->mu);
	out->refreshes = a->p[profile].refreshes;
	out->failures = a->p[profile].failures;
	out->expires_epoch_ms = a->p[profile].expires_epoch_ms;
	pthread_mutex_unlock(&a->mu);
}

bool auth_reload(struct auth *a, const struct cfg *new_cfg)
{
	bool ok = new_cfg && new_cfg->n_tenants == a->n;
	pthread_mutex_lock(&a->mu);
	for (size_t i = 0; ok && i < a->n; i++)
		ok = strcmp(a->cfg->tenants[i].name, new_cfg->tenants[i].name) == 0;
	if (ok) {
		int64_t now = cptime_mono_ms();
		a->cfg = new_cfg;
		a->gen++;
		for (size_t i = 0; i < a->n; i++)
			if (a->p[i].failed && !a->p[i].in_flight)
				a->p[i].next_due_ms = now;
	}
	pthread_mutex_unlock(&a->mu);
	if (!ok) {
		log_error("auth: reload refused: the credential profiles changed (restart needed)");
		return false;
	}
	wake(a);
	return true;
}
