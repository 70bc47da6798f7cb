/*
 * worker.c - one libcurl multi loop per thread: POST /chats, operation polls and lookups.
 * This file: the loop, the queues of a worker and its lifecycle. Transfers are set up and
 * ended in worker_xfer.c, their answers handled in worker_answers.c; worker_int.h is what
 * the three share.
 */
#include "worker.h"

#include <curl/curl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chatreq.h"
#include "cptime.h"
#include "dynbuf.h"
#include "graphreq.h"
#include "graphresp.h"
#include "idcache.h"
#include "log.h"
#include "pipeline_metrics.h"
#include "tls.h"

#include "worker_int.h"

/* ---- small containers ---- */

bool worker_heap_push(struct job_heap *h, struct job *job)
{
	if (h->len == h->cap) {
		size_t cap = h->cap ? h->cap * 2 : 64;
		struct job **items = realloc(h->items, cap * sizeof *items);
		if (!items)
			return false;
		h->items = items;
		h->cap = cap;
	}
	size_t i = h->len++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (h->items[parent]->next_poll_mono_ms <= job->next_poll_mono_ms)
			break;
		h->items[i] = h->items[parent];
		i = parent;
	}
	h->items[i] = job;
	return true;
}

static struct job *heap_pop(struct job_heap *h)
{
	struct job *top = h->items[0];
	struct job *last = h->items[--h->len];
	size_t i = 0;
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= h->len)
			break;
		if (child + 1 < h->len &&
		    h->items[child + 1]->next_poll_mono_ms < h->items[child]->next_poll_mono_ms)
			child++;
		if (last->next_poll_mono_ms <= h->items[child]->next_poll_mono_ms)
			break;
		h->items[i] = h->items[child];
		i = child;
	}
	if (h->len)
		h->items[i] = last;
	return top;
}

bool worker_park_job(struct worker *w, struct job *job)
{
	if (w->n_parked == w->cap_parked) {
		size_t cap = w->cap_parked ? w->cap_parked * 2 : 16;
		struct job **p = realloc(w->parked, cap * sizeof *p);
		if (!p)
			return false;
		w->parked = p;
		w->cap_parked = cap;
	}
	w->parked[w->n_parked++] = job;
	return true;
}

static void update_active(struct worker *w)
{
	atomic_store(&w->active, w->in_flight + w->polls.len + w->n_parked);
}

struct worker_policy worker_current_policy(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	struct worker_policy p = w->policy;
	pthread_mutex_unlock(&w->lock);
	return p;
}

static bool is_stopping(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	bool s = w->stopping;
	pthread_mutex_unlock(&w->lock);
	return s;
}

/* ---- the loop ---- */

static unsigned capacity(const struct worker *w)
{
	return w->in_flight >= w->conf.max_in_flight
	           ? 0
	           : w->conf.max_in_flight - (unsigned)w->in_flight;
}

static void admit_parked(struct worker *w)
{
	size_t n = w->n_parked;
	struct job **jobs = w->parked;
	w->parked = NULL;
	w->n_parked = w->cap_parked = 0;
	for (size_t i = 0; i < n; i++)
		worker_launch(w, jobs[i]);
	free(jobs);
}

/* Starts due polls and scheduled POSTs; returns the next time anything is due. */
static int64_t admit_work(struct worker *w, int64_t now)
{
	int64_t wake = now + LOOP_IDLE_MS;
	/* Parked jobs wait for news from the auth thread, or a second for their deadline. */
	if (w->n_parked &&
	    (atomic_exchange(&w->token_changed, false) || now - w->parked_retry_ms >= 1000)) {
		w->parked_retry_ms = now;
		admit_parked(w);
	}
	while (w->polls.len && capacity(w) && w->polls.items[0]->next_poll_mono_ms <= now)
		worker_launch(w, heap_pop(&w->polls));
	if (w->polls.len && w->polls.items[0]->next_poll_mono_ms < wake)
		wake = w->polls.items[0]->next_poll_mono_ms;
	bool took = false;
	while (capacity(w)) {
		void *job;
		size_t tenant;
		int64_t at = 0;
		enum pacer_take_status st = pacer_take(w->conf.pacer, now, &job, &tenant, &at);
		if (st == PACER_WAIT && at < wake)
			wake = at;
		if (st != PACER_TAKEN)
			break;
		worker_launch(w, job);
		took = true;
	}
	if (took && w->conf.hooks.took_work)
		w->conf.hooks.took_work(w->conf.arg);
	return wake;
}

static void reap_transfers(struct worker *w)
{
	int queued;
	CURLMsg *msg;
	while ((msg = curl_multi_info_read(w->multi, &queued)) != NULL) {
		if (msg->msg == CURLMSG_DONE)
			worker_finish_transfer(w, msg->easy_handle, msg->data.result);
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	for (;;) {
		/* Before looking for work: a worker_wakeup from now on sends a wake-up again. */
		atomic_store(&w->wake_pending, false);
		int64_t now = cptime_mono_ms();
		atomic_store(&w->heartbeat_ms, now);
		bool stopping = is_stopping(w);
		if (stopping && w->in_flight == 0)
			break;
		int64_t wake = stopping ? now + LOOP_IDLE_MS : admit_work(w, now);
		update_active(w);
		int running;
		curl_multi_perform(w->multi, &running);
		reap_transfers(w);
		int64_t timeout = wake - cptime_mono_ms();
		if (timeout < 0)
			timeout = 0;
		if (timeout > LOOP_IDLE_MS)
			timeout = LOOP_IDLE_MS;
		curl_multi_poll(w->multi, NULL, 0, (int)timeout, NULL);
	}
	update_active(w);
	atomic_store(&w->exited, true);
	return NULL;
}

/* ---- lifecycle ---- */

static bool build_roots(struct worker *w)
{
	struct chatreq_roots roots;
	if (!chatreq_roots(w->conf.cfg, &roots))
		return false;
	memcpy(w->version_root, roots.version_root, sizeof w->version_root);
	memcpy(w->bind_root, roots.bind_root, sizeof w->bind_root);
	memcpy(w->chats_url, roots.chats_url, sizeof w->chats_url);
	return true;
}

bool worker_new(const struct worker_conf *conf, struct worker **out)
{
	struct worker *w = calloc(1, sizeof *w);
	if (!w)
		return false;
	w->conf = *conf;
	w->policy = conf->policy;
	w->rng = (uint64_t)cptime_wall_ms() ^ (uint64_t)(uintptr_t)w;
	if (pthread_mutex_init(&w->lock, NULL) != 0) {
		free(w);
		return false;
	}
	w->https = strncmp(conf->cfg->graph.base_url, "https://", 8) == 0;
	w->token_buf = calloc(1, TOKEN_MAX);
	w->multi = curl_multi_init();
	if (!w->token_buf || !w->multi || !idcache_new(IDCACHE_CAPACITY, IDCACHE_TTL_MS, &w->ids) ||
	    !build_roots(w))
		goto fail;
	/*
	 * libcurl puts at most CURLMOPT_MAX_CONCURRENT_STREAMS (default 100) streams on one
	 * HTTP/2 connection, whatever the server allows; past that each waiting transfer
	 * opens a connection of its own (PIPEWAIT only waits while libcurl does not know
	 * whether the host multiplexes): 1,000 in flight opened 160-750 TLS connections
	 * (bench/run h2). The server's own
	 * SETTINGS_MAX_CONCURRENT_STREAMS still applies below this.
	 */
	if (curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, (long)conf->max_in_flight) !=
	        CURLM_OK ||
	    curl_multi_setopt(w->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX) !=
	        CURLM_OK ||
	    curl_multi_setopt(w->multi, CURLMOPT_MAX_CONCURRENT_STREAMS,
	                      (long)conf->max_in_flight) != CURLM_OK ||
	    (w->https &&
	     curl_multi_setopt(w->multi, CURLMOPT_MAX_HOST_CONNECTIONS,
	                       worker_https_connection_cap(conf->max_in_flight)) != CURLM_OK))
		goto fail;
	*out = w;
	return true;
fail:
	worker_free(w);
	return false;
}

bool worker_start(struct worker *w)
{
	if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
		return false;
	w->started = true;
	return true;
}

/*
 * One wake-up per loop turn of the worker, however many events the Kafka thread hands over
 * meanwhile: each is a syscall here and a poll plus a curl_multi_perform pass there
 * (issue 15). The worker clears the flag before it looks for work, so work handed over
 * after that look always sends one; before it, the wake-up already sent is still pending.
 */
void worker_wakeup(struct worker *w)
{
	if (!atomic_exchange(&w->wake_pending, true))
		curl_multi_wakeup(w->multi);
}

void worker_token_changed(struct worker *w)
{
	atomic_store(&w->token_changed, true);
	worker_wakeup(w);
}

void worker_set_policy(struct worker *w, const struct worker_policy *policy)
{
	pthread_mutex_lock(&w->lock);
	w->policy = *policy;
	pthread_mutex_unlock(&w->lock);
	worker_wakeup(w);
}

void worker_stop(struct worker *w)
{
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_mutex_unlock(&w->lock);
	worker_wakeup(w);
}

size_t worker_join(struct worker *w, struct job ***jobs)
{
	if (w->started) {
		pthread_join(w->thread, NULL);
		w->started = false;
	}
	size_t n = w->polls.len + w->n_parked;
	*jobs = NULL;
	if (n == 0)
		return 0;
	struct job **list = malloc(n * sizeof *list);
	if (!list)
		return 0;
	size_t k = 0;
	for (size_t i = 0; i < w->polls.len; i++)
		list[k++] = w->polls.items[i];
	for (size_t i = 0; i < w->n_parked; i++)
		list[k++] = w->parked[i];
	w->polls.len = w->n_parked = 0;
	update_active(w);
	*jobs = list;
	return k;
}

void worker_free(struct worker *w)
{
	if (!w)
		return;
	if (w->started)
		worker_stop(w);
	struct job **rest;
	size_t n = worker_join(w, &rest);
	for (size_t i = 0; i < n; i++)
		job_free(rest[i]);
	free(rest);
	if (w->multi)
		curl_multi_cleanup(w->multi);
	free(w->polls.items);
	free(w->parked);
	free(w->token_buf);
	idcache_free(w->ids);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

int64_t worker_heartbeat_ms(const struct worker *w)
{
	return atomic_load(&w->heartbeat_ms);
}

bool worker_exited(const struct worker *w)
{
	return atomic_load(&w->exited);
}

size_t worker_active(const struct worker *w)
{
	return atomic_load(&w->active);
}
