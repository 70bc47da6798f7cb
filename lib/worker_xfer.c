/*
 * worker_xfer.c - an HTTP worker's transfers: the easy handle of each exchange (URL, headers,
 * the POST body that refuses to be sent twice, the hold of a POST whose tenant is blocked),
 * what a job needs next (POST, poll, lookup, member resolution, chat read), and the end of
 * a transfer, handed to worker_answers.c.
 */
#include <curl/curl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chatreq.h"
#include "cptime.h"
#include "graphreq.h"
#include "graphresp.h"
#include "log.h"
#include "pipeline_metrics.h"
#include "tls.h"
#include "worker_int.h"

/* ---- transfers ---- */

static size_t keep_response_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	/* Over the limit or out of memory, 0 aborts the transfer: CURLE_WRITE_ERROR. */
	return dynbuf_add(&x->resp, data, size * nmemb) ? size * nmemb : 0;
}

/* Copies a header's value (trimmed) when its name matches. */
static bool take_header(const char *line, size_t len, const char *name, char *out, size_t cap)
{
	size_t nlen = strlen(name);
	if (len <= nlen || strncasecmp(line, name, nlen) != 0 || line[nlen] != ':')
		return false;
	const char *v = line + nlen + 1;
	const char *end = line + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	size_t vlen = (size_t)(end - v);
	if (vlen >= cap)
		vlen = 0; /* too long to be trusted: treat as absent */
	memcpy(out, v, vlen);
	out[vlen] = '\0';
	return true;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *arg)
{
	struct xfer *x = arg;
	size_t n = size * nmemb;
	if (n >= 5 && strncmp(data, "HTTP/", 5) == 0) {
		/* A new response (after 100 Continue): forget the previous one's headers. */
		x->request_id[0] = x->location[0] = x->retry_after[0] = '\0';
		return n;
	}
	if (!take_header(data, n, "request-id", x->request_id, sizeof x->request_id) &&
	    !take_header(data, n, "location", x->location, sizeof x->location))
		(void)take_header(data, n, "retry-after", x->retry_after, sizeof x->retry_after);
	return n;
}

/* Appends "Name: value" to a header list; the line is wiped once curl has copied it. */
static bool add_header(struct curl_slist **list, const char *name, const char *value)
{
	char line[TOKEN_MAX + 64];
	int len = snprintf(line, sizeof line, "%s: %s", name, value);
	if (len < 0 || len >= (int)sizeof line)
		return false;
	struct curl_slist *n = curl_slist_append(*list, line);
	explicit_bzero(line, (size_t)len); /* only what was written: this runs per header */
	if (!n)
		return false;
	*list = n;
	return true;
}

static void xfer_free(struct xfer *x)
{
	if (!x)
		return;
	if (x->easy)
		curl_easy_cleanup(x->easy);
	/* The Authorization line holds the token: wipe every header line before freeing. */
	for (struct curl_slist *h = x->headers; h; h = h->next)
		explicit_bzero(h->data, strlen(h->data));
	curl_slist_free_all(x->headers);
	if (x->token) {
		explicit_bzero(x->token, strlen(x->token));
		free(x->token);
	}
	dynbuf_free(&x->resp);
	free(x->url);
	free(x);
}

static bool xfer_headers(struct xfer *x, const char *token)
{
	char bearer[TOKEN_MAX + 8];
	struct job *job = x->job;
	int len = snprintf(bearer, sizeof bearer, "Bearer %s", token);
	if (len < 0 || len >= (int)sizeof bearer)
		return false;
	bool ok = add_header(&x->headers, "Authorization", bearer) &&
	          add_header(&x->headers, "client-request-id", job->client_request_id) &&
	          add_header(&x->headers, "return-client-request-id", "true") &&
	          add_header(&x->headers, "Accept", "application/json") &&
	          add_header(&x->headers, "User-Agent", "chatprovd/" CHATPROV_VERSION);
	explicit_bzero(bearer, (size_t)len);
	if (!ok)
		return false;
	if (x->kind == XFER_POST) {
		if (!add_header(&x->headers, "Content-Type", "application/json"))
			return false;
		/* "Expect:" with no value stops curl's 100-continue round trip on HTTP/1.1. */
		struct curl_slist *n = curl_slist_append(x->headers, "Expect:");
		if (!n)
			return false;
		x->headers = n;
		return true;
	}
	return add_header(&x->headers, "Prefer", "include-unknown-enum-members");
}

static const char *xfer_url(const struct worker *w, const struct xfer *x)
{
	switch (x->kind) {
	case XFER_POST:
		return w->chats_url;
	case XFER_POLL:
		return x->job->op_url;
	case XFER_LOOKUP:
	case XFER_RESOLVE:
	case XFER_CHAT:
	case XFER_MEMBERS:
		break;
	}
	return x->url;
}

/* XFER_POST: hands libcurl the job's body. */
static size_t read_body(char *buf, size_t size, size_t nitems, void *arg)
{
	struct xfer *x = arg;
	size_t left = x->body_len - x->body_sent;
	size_t n = size * nitems < left ? size * nitems : left;
	memcpy(buf, x->job->body + x->body_sent, n);
	x->body_sent += n;
	return n;
}

/*
 * When a reused connection dies before an answer, libcurl sends the request again on a new
 * one by itself, rewinding the body first; the POST may have reached Graph already and
 * nothing would tell the worker. A body that cannot be rewound makes that resend fail, so
 * the error reaches on_post_answer: a group chat goes through the unknown-outcome path
 * (lookup), a one-on-one chat is retried (Graph returns the same chat).
 */
static int refuse_rewind(void *arg, curl_off_t offset, int origin)
{
	(void)arg;
	(void)offset;
	(void)origin;
	return CURL_SEEKFUNC_CANTSEEK;
}

/*
 * Right before a POST goes on the wire (its connection ready, nothing of it sent): a 429
 * that came back since the scheduler handed the job out blocks its tenant, and a transfer
 * that waited in libcurl's queue for a connection must not go inside the advertised
 * window. Aborted here, it ends with CURLE_ABORTED_BY_CALLBACK and is requeued (hold_post).
 */
static int hold_if_blocked(void *arg, char *primary_ip, char *local_ip, int primary_port,
                           int local_port)
{
	struct xfer *x = arg;
	(void)primary_ip;
	(void)local_ip;
	(void)primary_port;
	(void)local_port;
	if (!pacer_blocked(x->w->conf.pacer, x->job->tenant, cptime_mono_ms()))
		return CURL_PREREQFUNC_OK;
	x->held = true;
	return CURL_PREREQFUNC_ABORT;
}

static bool xfer_post_body(struct xfer *x)
{
	CURL *e = x->easy;
	x->body_len = strlen(x->job->body);
	/* A read callback makes libcurl allocate an upload buffer per transfer, 64 KiB by
	 * default: the smallest it takes (bodies are a few KiB) keeps 1,000 in flight small. */
	return curl_easy_setopt(e, CURLOPT_POST, 1L) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 16384L) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_READFUNCTION, read_body) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_READDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, refuse_rewind) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_SEEKDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, hold_if_blocked) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_PREREQDATA, x) == CURLE_OK &&
	       curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len) ==
	           CURLE_OK;
}

static bool xfer_setup(struct worker *w, struct xfer *x)
{
	const struct cfg *cfg = w->conf.cfg;
	CURL *e = x->easy;
	bool ok =
	    curl_easy_setopt(e, CURLOPT_PRIVATE, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_URL, xfer_url(w, x)) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, keep_response_body) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_WRITEDATA, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HEADERDATA, x) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->curl_err) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(cfg->graph.request_timeout_s * 1000)) ==
	        CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
	                     (long)(cfg->graph.connect_timeout_s * 1000)) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS) == CURLE_OK &&
	    /* Waiting to multiplex only makes sense over HTTP/2 (https): on HTTP/1.1 it
	     * ties every waiting transfer to one connection, hung or not. */
	    curl_easy_setopt(e, CURLOPT_PIPEWAIT, w->https ? 1L : 0L) == CURLE_OK &&
	    /* Answers are a few KiB: a 4 KiB receive buffer instead of 16 KiB per transfer
	     * (a thousand in flight); a larger answer is only read in more steps. */
	    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https,http") == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L) == CURLE_OK &&
	    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L) == CURLE_OK;
	if (ok)
		ok = tls_trust_ca_file(e, cfg->graph.ca_file);
	if (ok && x->kind == XFER_POST)
		ok = xfer_post_body(x);
	return ok;
}

/* The first owner of a group chat: the user whose chats a lookup lists. */
static const char *lookup_owner(const struct job *job)
{
	for (size_t i = 0; i < job->ev->n_members; i++)
		if (!job->ev->members[i].guest && !job->ev->members[i].tenant_id)
			return job->ev->members[i].user_id;
	return NULL;
}

/* The URL of a lookup step (a member's object id, the first page, the next) or a chat read. */
static bool xfer_own_url(const struct worker *w, const struct job *job, struct xfer *x)
{
	char url[GRAPHREQ_URL_MAX + 1];
	const struct job_lookup *l = job->lookup;
	const char *owner = lookup_owner(job);
	bool built;
	if (x->kind == XFER_CHAT) {
		built = graphreq_chat_url(w->version_root, job->chat_id, url, sizeof url);
	} else if (x->kind == XFER_MEMBERS) {
		built = graphreq_chat_members_url(
		    w->version_root, l->candidates[l->next_candidate].id, url, sizeof url);
	} else if (x->kind == XFER_RESOLVE) {
		built = graphreq_user_id_url(w->version_root, job->ev->members[l->resolved].user_id,
		                             url, sizeof url);
	} else if (l->next_page) {
		x->url = strdup(l->next_page);
		return x->url != NULL;
	} else {
		built =
		    owner && job->ev->topic &&
		    graphreq_lookup_url(w->version_root, owner, job->ev->topic, url, sizeof url);
	}
	if (!built) {
		return false;
	}
	x->url = strdup(url);
	return x->url != NULL;
}

/* A POST a Retry-After holds goes back to the queue: not an attempt, not a retry. */
static void requeue_held(struct worker *w, struct job *job)
{
	int64_t now = cptime_mono_ms();
	if (!pacer_requeue(w->conf.pacer, job->tenant, job, now, now)) {
		job_fail(job, 429, "QueueFull", "scheduler queue full on retry", true);
		worker_finish_job(w, job);
	}
}

/* A POST hold_if_blocked stopped before it was sent: the attempt it counted is undone. */
static void hold_post(struct worker *w, struct xfer *x)
{
	struct job *job = x->job;
	int32_t partition = job->partition;
	job->attempts--;
	job->first_attempt_mono_ms = x->prev_first_attempt_ms;
	requeue_held(w, job);
	if (w->conf.hooks.post_end)
		w->conf.hooks.post_end(partition, w->conf.arg);
}

/* Starts an exchange for job with token. false: the job was not started. */
static bool start_transfer(struct worker *w, struct job *job, enum xfer_kind kind,
                           const char *token)
{
	struct xfer *x = calloc(1, sizeof *x);
	if (!x)
		goto fail;
	x->w = w;
	x->job = job;
	x->kind = kind;
	dynbuf_init(&x->resp, w->conf.cfg->graph.max_response_bytes);
	x->started_mono_ms = cptime_mono_ms();
	x->token = strdup(token);
	x->easy = curl_easy_init();
	if (!x->token || !x->easy ||
	    ((kind == XFER_LOOKUP || kind == XFER_RESOLVE || kind == XFER_CHAT ||
	      kind == XFER_MEMBERS) &&
	     !xfer_own_url(w, job, x)) ||
	    !xfer_headers(x, token) || !xfer_setup(w, x) ||
	    curl_multi_add_handle(w->multi, x->easy) != CURLM_OK)
		goto fail;
	w->in_flight++;
	if (kind == XFER_POST) {
		x->prev_first_attempt_ms = job->first_attempt_mono_ms;
		job->attempts++;
		if (!job->first_attempt_mono_ms)
			job->first_attempt_mono_ms = x->started_mono_ms;
		if (!job->intent_wall_ms)
			job->intent_wall_ms = cptime_wall_ms();
	}
	return true;
fail:
	if (kind == XFER_POST && w->conf.hooks.post_end) /* begun by launch */
		w->conf.hooks.post_end(job->partition, w->conf.arg);
	xfer_free(x);
	return false;
}

/* A job whose partition went to another instance: it leaves without a result. */
static void abandon(struct worker *w, struct job *job)
{
	job->status = JOB_ABANDONED;
	w->conf.on_done(job, w->conf.arg);
}

/*
 * Moves a lookup past the members it needs no request for: ids, members of other tenants,
 * UPNs whose object id is cached. True when member l->resolved needs a GET /users.
 */
static bool lookup_needs_user(struct worker *w, struct job *job)
{
	struct job_lookup *l = job->lookup;
	int64_t now = cptime_mono_ms();
	for (; l->resolved < job->ev->n_members; l->resolved++) {
		const struct event_member *m = &job->ev->members[l->resolved];
		if (m->tenant_id || !event_is_upn(m->user_id))
			continue;
		if (!idcache_get(w->ids, job->ev->tenant, m->user_id, now,
		                 l->object_ids[l->resolved]))
			return true;
	}
	return false;
}

/* A lookup goes on: the next member to resolve, else the chats. False: the job failed. */
static bool lookup_kind(struct worker *w, struct job *job, enum xfer_kind *kind)
{
	if (!job->lookup) {
		job->lookup = calloc(1, sizeof *job->lookup);
		if (job->lookup)
			job->lookup->object_ids =
			    calloc(job->ev->n_members, sizeof *job->lookup->object_ids);
		if (!job->lookup || !job->lookup->object_ids) {
			job_lookup_end(job);
			job_fail(job, job->http_status, "OutcomeUnknown",
			         "the group chat may exist; out of memory looking it up", true);
			worker_finish_job(w, job);
			return false;
		}
	}
	struct job_lookup *l = job->lookup;
	*kind = lookup_needs_user(w, job)             ? XFER_RESOLVE
	        : l->next_candidate < l->n_candidates ? XFER_MEMBERS
	                                              : XFER_LOOKUP;
	return true;
}

/*
 * Counts a POST in flight, then checks that the partition is still ours: in this order, a
 * revoke (which changes the generation, then waits until no POST is counted) either sees
 * this one and waits for it, or happened before the check, which then fails. Checking first
 * would leave a window in which a revoke sees nothing in flight and the POST still leaves,
 * while the next owner's lookup may run before it lands. False: not ours, nothing counted.
 */
static bool begin_post(struct worker *w, struct job *job)
{
	const struct worker_hooks *h = &w->conf.hooks;
	if (h->post_begin)
		h->post_begin(job->partition, w->conf.arg);
	if (!h->is_current || h->is_current(job, w->conf.arg))
		return true;
	if (h->post_end)
		h->post_end(job->partition, w->conf.arg);
	return false;
}

/*
 * What a job needs next: a poll of its operation, a lookup of a group chat whose creation
 * may have happened already, or a POST. A lookup that cannot be made ends the job with
 * OutcomeUnknown rather than risk a second chat. Returns false when the job was finished.
 */
static bool next_kind(struct worker *w, struct job *job, enum xfer_kind *kind)
{
	if (w->conf.hooks.is_current && !w->conf.hooks.is_current(job, w->conf.arg)) {
		/* The new owner of the partition resumes from the state topic. */
		abandon(w, job);
		return false;
	}
	if (job->phase == JOB_PHASE_POLL || job->phase == JOB_PHASE_CHAT) {
		*kind = job->phase == JOB_PHASE_POLL ? XFER_POLL : XFER_CHAT;
		return true;
	}
	if (!job->needs_lookup) {
		*kind = XFER_POST;
		return true;
	}
	struct worker_policy p = worker_current_policy(w);
	if (!p.group_chat_lookup || !job->ev->topic || !lookup_owner(job)) {
		job_fail(job, job->http_status, "OutcomeUnknown",
		         p.group_chat_lookup
		             ? "the group chat may exist; it has no topic or owner to look it up by"
		             : "the group chat may exist; [recovery] group_chat_lookup is off",
		         false);
		worker_finish_job(w, job);
		return false;
	}
	return lookup_kind(w, job, kind);
}

/* Gets the tenant's token and starts the job's next exchange, or parks it. */
void worker_launch(struct worker *w, struct job *job)
{
	enum xfer_kind kind;
	if (!next_kind(w, job, &kind))
		return;
	int64_t expires;
	enum auth_status st =
	    auth_get_token(w->conf.auth, job->tenant, w->token_buf, TOKEN_MAX, &expires);
	if (st != AUTH_OK) {
		/*
		 * Pending credentials hold the job: nothing fails because the token endpoint
		 * blinked. Failing credentials hold it too, in case they are fixed (SIGHUP),
		 * but only for the retry budget's max_elapsed_s: a broken tenant profile must
		 * not hold memory, and so the other tenants, forever.
		 */
		int64_t now = cptime_mono_ms();
		if (!job->held_since_mono_ms)
			job->held_since_mono_ms = now;
		struct worker_policy p = worker_current_policy(w);
		if (st == AUTH_FAILED && p.retry.max_elapsed_ms > 0 &&
		    now - job->held_since_mono_ms > p.retry.max_elapsed_ms) {
			char why[JOB_ERR_MSG_MAX];
			auth_last_error(w->conf.auth, job->tenant, why, sizeof why);
			job_fail(job, 0, "AuthenticationFailed", why, true);
			worker_finish_job(w, job);
			return;
		}
		if (!worker_park_job(w, job)) {
			job_fail(job, 0, "OutOfMemory", "cannot park job", true);
			worker_finish_job(w, job);
		}
		return;
	}
	if (kind == XFER_POST && pacer_blocked(w->conf.pacer, job->tenant, cptime_mono_ms())) {
		/* Parked while a 429 came back: it waits for the block's end in the queue. */
		explicit_bzero(w->token_buf, strlen(w->token_buf));
		requeue_held(w, job);
		return;
	}
	if (kind == XFER_POST && !begin_post(w, job)) {
		explicit_bzero(w->token_buf, strlen(w->token_buf));
		abandon(w, job); /* the new owner resumes from the state topic */
		return;
	}
	bool ok = start_transfer(w, job, kind, w->token_buf);
	explicit_bzero(w->token_buf, strlen(w->token_buf));
	if (!ok) {
		job_fail(job, 0, "InternalError", "cannot start HTTP transfer", true);
		worker_finish_job(w, job);
	}
}

/*
 * libcurl does not wait for a connection that is still in its handshake, or whose
 * SETTINGS (the server's stream limit) have not arrived, once it knows the host
 * multiplexes: a burst of transfers then opens a connection each (measured: 700 for 800
 * concurrent requests, and again after a connection died with 1,000 streams). Over https
 * the connections are capped from the start at what max_in_flight needs at the 100
 * streams per connection HTTP/2 servers should allow at least; the surplus waits in
 * libcurl's pending queue for a connection to multiplex on. A server that answers over
 * HTTP/1.1 cannot multiplex: the cap is lifted at its first answer.
 */
long worker_https_connection_cap(unsigned max_in_flight)
{
	const long streams_per_connection = 100, min_connections = 4;
	long n = ((long)max_in_flight + streams_per_connection - 1) / streams_per_connection;
	return n < min_connections ? min_connections : n;
}

static void note_protocol(struct worker *w, CURL *easy, long status)
{
	long version = 0;
	if (w->protocol_known || !w->https || status == 0 ||
	    curl_easy_getinfo(easy, CURLINFO_HTTP_VERSION, &version) != CURLE_OK)
		return;
	w->protocol_known = true;
	if (version != CURL_HTTP_VERSION_2_0 &&
	    curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS, 0L) != CURLM_OK)
		log_msg(LOG_LVL_WARNING, "cannot lift the connection cap for HTTP/1.1");
}

void worker_finish_transfer(struct worker *w, CURL *easy, CURLcode rc)
{
	struct xfer *x = NULL;
	long status = 0;
	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
	note_protocol(w, easy, status);
	curl_multi_remove_handle(w->multi, easy);
	w->in_flight--;
	if (x->held) {
		hold_post(w, x);
		xfer_free(x);
		return;
	}
	struct job *job = x->job;
	if (dynbuf_too_big(&x->resp)) {
		rc = CURLE_OK;
		dynbuf_reset(&x->resp);
		snprintf(x->curl_err, sizeof x->curl_err, "response body over max_response_bytes");
	}
	pipeline_metrics_graph_response(w->conf.metrics, job->tenant, status,
	                                (cptime_mono_ms() - x->started_mono_ms) / 1000.0);
	/* The result's "graph" part describes the POST; polls only move the operation. */
	if (x->kind == XFER_POST) {
		job->http_status = rc == CURLE_OK ? status : 0;
		snprintf(job->graph_request_id, sizeof job->graph_request_id, "%s", x->request_id);
	}
	long answer = rc == CURLE_OK ? status : 0;
	int32_t partition = job->partition; /* job may be gone once its outcome is out */
	switch (x->kind) {
	case XFER_POST:
		worker_on_post_answer(w, job, x, rc, answer);
		if (w->conf.hooks.post_end)
			w->conf.hooks.post_end(partition, w->conf.arg);
		break;
	case XFER_POLL:
		worker_on_poll_answer(w, job, x, rc, answer);
		break;
	case XFER_LOOKUP:
		worker_on_lookup_answer(w, job, x, rc, answer);
		break;
	case XFER_RESOLVE:
		worker_on_resolve_answer(w, job, x, rc, answer);
		break;
	case XFER_CHAT:
		worker_on_chat_answer(w, job, x, rc, answer);
		break;
	case XFER_MEMBERS:
		worker_on_members_answer(w, job, x, rc, answer);
		break;
	}
	xfer_free(x);
}
