/*
 * pacer.c - token buckets, AIMD, Retry-After blocks and per-tenant queues behind one mutex.
 *
 * Data layout: queued jobs live in one node pool (indexes, free list). A node is either in its
 * tenant's ready FIFO (a singly linked list through the pool) or in the one delayed min-heap
 * (ordered by not-before time). Tenants with a non-empty ready FIFO sit in a min-heap keyed by
 * the time they may next send, max(token time, Retry-After block, when they last sent or became
 * ready), ties broken by a sequence number: the longest-waiting eligible tenant goes first.
 * A tenant's key only changes on its own events (push, take, result, limit change) because
 * buckets refill linearly, so the heap stays valid as time passes.
 */
#include "pacer.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "eta.h"

/* AIMD constants; docs/scheduling.md explains the choice. */
#define PACER_MD_FACTOR      0.5  /* rate multiplier on a 429 */
#define PACER_FLOOR_FRACTION 0.05 /* the rate never drops below this share of the limit */
#ifndef PACER_AI_FAST
#define PACER_AI_FAST 0.05 /* share of the limit given back per success, below the knee */
#endif
#ifndef PACER_AI_SLOW
#define PACER_AI_SLOW 0.01 /* ... and at or above it: probing where the last 429 came */
#endif
#ifndef PACER_KNEE
#define PACER_KNEE 0.7 /* the knee: this share of the rate that drew the last 429 */
#endif

#define NIL       UINT32_MAX
#define TOKEN_EPS PACER_TOKEN_EPS
/* Longest wait computed from a bucket (~30 years): keeps the arithmetic in range. */
#define MAX_WAIT_MS 1000000000000LL

struct bucket {
	double tokens;
	double cap; /* burst: at least one whole token */
	double rate_per_ms;
	int64_t last_ms; /* INT64_MIN: never refilled (starts full) */
};

struct node {
	void *job;
	int64_t not_before;
	uint64_t seq; /* ties in the delayed heap: push order */
	uint32_t tenant;
	uint32_t next; /* ready FIFO link, or free-list link */
};

struct tenant {
	char *name;
	double limit; /* configured, per window */
	double rate;  /* current (AIMD), per window */
	bool uses_default;
	struct bucket bucket;
	int64_t blocked_until;
	int64_t md_until; /* 429s before this belong to the episode already halved for */
	double knee;      /* below it, recover fast; 0: no 429 seen yet */
	double window;    /* slow start: the most tokens the bucket holds; INFINITY: off */
	uint32_t head, tail;
	size_t ready, delayed;
	size_t heap_pos;     /* position in the tenant heap; SIZE_MAX: not in it */
	int64_t ready_since; /* when it last sent or became ready: round-robin order */
	int64_t key;
	uint64_t key_seq;
	uint64_t taken, succeeded, throttled, failed;
};

struct pacer {
	pthread_mutex_t lock;
	struct pacer_limits lim;
	struct bucket global;
	int64_t latest_now; /* the latest time any call brought: reloads apply from it */
	uint64_t seq;

	struct tenant *tenants;
	size_t n_tenants, cap_tenants;
	uint32_t *theap; /* tenant indexes */
	size_t n_theap;

	struct node *nodes;
	size_t cap_nodes;
	uint32_t free_head;
	uint32_t *dheap; /* node indexes, capacity cap_nodes */
	size_t n_dheap;

	size_t max_queued, queued;

	pacer_throttle_fn *on_throttle; /* told of each 429's block, outside the lock */
	void *on_throttle_arg;
};

/* ---- buckets ---- */

static double window_ms(const struct pacer *s)
{
	return s->lim.window_s * 1000.0;
}

static void bucket_set(struct bucket *b, double per_window, double win_ms)
{
	b->rate_per_ms = per_window / win_ms;
	b->cap = per_window > 1.0 ? per_window : 1.0;
	if (b->tokens > b->cap)
		b->tokens = b->cap;
}

/* A tenant's bucket: its current rate, its burst no more than its slow-start window. */
static void tenant_bucket_set(struct pacer *s, struct tenant *tn)
{
	bucket_set(&tn->bucket, tn->rate, window_ms(s));
	if (tn->bucket.cap > tn->window)
		tn->bucket.cap = tn->window > 1.0 ? tn->window : 1.0;
	if (tn->bucket.tokens > tn->bucket.cap)
		tn->bucket.tokens = tn->bucket.cap;
}

static double slow_start_window(const struct pacer *s)
{
	return s->lim.slow_start_tokens > 0 ? s->lim.slow_start_tokens : INFINITY;
}

static void bucket_refill(struct bucket *b, int64_t now)
{
	if (b->last_ms == INT64_MIN || now <= b->last_ms) {
		if (b->last_ms == INT64_MIN)
			b->last_ms = now;
		return; /* first sight, or time standing still (or a caller's clock going back) */
	}
	b->tokens += (double)(now - b->last_ms) * b->rate_per_ms;
	if (b->tokens > b->cap)
		b->tokens = b->cap;
	b->last_ms = now;
}

static bool bucket_has_token(const struct bucket *b)
{
	return b->tokens >= 1.0 - TOKEN_EPS;
}

/* The earliest time the bucket holds a whole token (INT64_MIN: it already does). */
static int64_t bucket_token_time(const struct bucket *b)
{
	if (bucket_has_token(b) || b->last_ms == INT64_MIN)
		return INT64_MIN;
	double wait = ceil((1.0 - b->tokens) / b->rate_per_ms);
	return b->last_ms + (wait < (double)MAX_WAIT_MS ? (int64_t)wait : MAX_WAIT_MS);
}

static int64_t max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

static int64_t min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

static void see_time(struct pacer *s, int64_t now)
{
	s->latest_now = max64(s->latest_now, now);
}

/* ---- the tenant heap ---- */

static bool tenant_before(const struct pacer *s, uint32_t a, uint32_t b)
{
	const struct tenant *x = &s->tenants[a], *y = &s->tenants[b];
	return x->key < y->key || (x->key == y->key && x->key_seq < y->key_seq);
}

static void theap_place(struct pacer *s, size_t pos, uint32_t t)
{
	s->theap[pos] = t;
	s->tenants[t].heap_pos = pos;
}

static void theap_sift(struct pacer *s, size_t pos)
{
	uint32_t t = s->theap[pos];
	while (pos > 0 && tenant_before(s, t, s->theap[(pos - 1) / 2])) {
		theap_place(s, pos, s->theap[(pos - 1) / 2]);
		pos = (pos - 1) / 2;
	}
	for (;;) {
		size_t c = 2 * pos + 1;
		if (c >= s->n_theap)
			break;
		if (c + 1 < s->n_theap && tenant_before(s, s->theap[c + 1], s->theap[c]))
			c++;
		if (!tenant_before(s, s->theap[c], t))
			break;
		theap_place(s, pos, s->theap[c]);
		pos = c;
	}
	theap_place(s, pos, t);
}

static void theap_remove(struct pacer *s, uint32_t t)
{
	size_t pos = s->tenants[t].heap_pos;
	s->tenants[t].heap_pos = SIZE_MAX;
	uint32_t last = s->theap[--s->n_theap];
	if (pos < s->n_theap) {
		theap_place(s, pos, last);
		theap_sift(s, pos);
	}
}

/* Recomputes a tenant's key from its bucket and block; repositions it if it is queued. */
static void tenant_rekey(struct pacer *s, uint32_t t)
{
	struct tenant *tn = &s->tenants[t];
	tn->key = max64(max64(bucket_token_time(&tn->bucket), tn->blocked_until), tn->ready_since);
	if (tn->heap_pos != SIZE_MAX)
		theap_sift(s, tn->heap_pos);
}

/* Starts a new round-robin turn for the tenant: it queues behind those already waiting. */
static void tenant_new_turn(struct pacer *s, uint32_t t, int64_t now)
{
	s->tenants[t].ready_since = now;
	s->tenants[t].key_seq = s->seq++;
	tenant_rekey(s, t);
}

/* ---- nodes, FIFOs and the delayed heap ---- */

static bool node_before(const struct pacer *s, uint32_t a, uint32_t b)
{
	const struct node *x = &s->nodes[a], *y = &s->nodes[b];
	return x->not_before < y->not_before || (x->not_before == y->not_before && x->seq < y->seq);
}

static void dheap_push(struct pacer *s, uint32_t n)
{
	size_t pos = s->n_dheap++;
	while (pos > 0 && node_before(s, n, s->dheap[(pos - 1) / 2])) {
		s->dheap[pos] = s->dheap[(pos - 1) / 2];
		pos = (pos - 1) / 2;
	}
	s->dheap[pos] = n;
}

static uint32_t dheap_pop(struct pacer *s)
{
	uint32_t top = s->dheap[0], n = s->dheap[--s->n_dheap];
	size_t pos = 0;
	for (;;) {
		size_t c = 2 * pos + 1;
		if (c >= s->n_dheap)
			break;
		if (c + 1 < s->n_dheap && node_before(s, s->dheap[c + 1], s->dheap[c]))
			c++;
		if (!node_before(s, s->dheap[c], n))
			break;
		s->dheap[pos] = s->dheap[c];
		pos = c;
	}
	if (s->n_dheap)
		s->dheap[pos] = n;
	return top;
}

static void fifo_append(struct pacer *s, uint32_t n, int64_t now)
{
	uint32_t t = s->nodes[n].tenant;
	struct tenant *tn = &s->tenants[t];
	s->nodes[n].next = NIL;
	if (tn->ready++ == 0) {
		tn->head = tn->tail = n;
		tn->heap_pos = s->n_theap;
		s->theap[s->n_theap++] = t;
		tenant_new_turn(s, t, now);
	} else {
		s->nodes[tn->tail].next = n;
		tn->tail = n;
	}
}

static uint32_t fifo_pop(struct pacer *s, uint32_t t)
{
	struct tenant *tn = &s->tenants[t];
	uint32_t n = tn->head;
	tn->head = s->nodes[n].next;
	if (--tn->ready == 0) {
		tn->head = tn->tail = NIL;
		theap_remove(s, t);
	}
	return n;
}

/* Moves delayed jobs whose time has come to the tail of their tenant's ready FIFO. */
static void promote_due(struct pacer *s, int64_t now)
{
	while (s->n_dheap && s->nodes[s->dheap[0]].not_before <= now) {
		uint32_t n = dheap_pop(s);
		s->tenants[s->nodes[n].tenant].delayed--;
		fifo_append(s, n, now);
	}
}

static void node_release(struct pacer *s, uint32_t n)
{
	s->nodes[n].job = NULL;
	s->nodes[n].next = s->free_head;
	s->free_head = n;
	s->queued--;
}

/* Doubles the node pool (and the delayed heap with it): only requeues beyond max_queued. */
static bool pool_grow(struct pacer *s)
{
	size_t cap = s->cap_nodes * 2;
	if (cap > (size_t)PACER_MAX_QUEUED * 2)
		return false;
	struct node *nodes = realloc(s->nodes, cap * sizeof(*nodes));
	if (!nodes)
		return false;
	s->nodes = nodes;
	uint32_t *dheap = realloc(s->dheap, cap * sizeof(*dheap));
	if (!dheap)
		return false; /* the bigger node array is kept; the free list still fits the heap */
	s->dheap = dheap;
	for (size_t i = cap; i-- > s->cap_nodes;) {
		s->nodes[i].next = s->free_head;
		s->free_head = (uint32_t)i;
	}
	s->cap_nodes = cap;
	return true;
}

/* ---- creation ---- */

static bool limit_valid(double v)
{
	return isfinite(v) && v > 0 && v <= 1e9;
}

static bool limits_valid(const struct pacer_limits *lim)
{
	return limit_valid(lim->per_tenant_limit) && limit_valid(lim->global_limit) &&
	       limit_valid(lim->window_s) && lim->window_s <= 86400.0 * 366 &&
	       isfinite(lim->slow_start_tokens) && lim->slow_start_tokens >= 0;
}

bool pacer_new(const struct pacer_limits *lim, size_t max_queued, struct pacer **out)
{
	if (!limits_valid(lim) || max_queued == 0 || max_queued > PACER_MAX_QUEUED)
		return false;
	struct pacer *s = calloc(1, sizeof(*s));
	if (!s)
		return false;
	/* calloc: pages of a large pool are only touched as the queue actually fills */
	s->nodes = calloc(max_queued, sizeof(*s->nodes));
	s->dheap = calloc(max_queued, sizeof(*s->dheap));
	if (!s->nodes || !s->dheap || pthread_mutex_init(&s->lock, NULL) != 0)
		goto fail;
	s->lim = *lim;
	s->max_queued = s->cap_nodes = max_queued;
	s->free_head = NIL;
	for (size_t i = max_queued; i-- > 0;) {
		s->nodes[i].next = s->free_head;
		s->free_head = (uint32_t)i;
	}
	s->global.last_ms = INT64_MIN;
	bucket_set(&s->global, lim->global_limit, window_ms(s));
	s->global.tokens = s->global.cap;
	s->latest_now = INT64_MIN;
	*out = s;
	return true;
fail:
	free(s->nodes);
	free(s->dheap);
	free(s);
	return false;
}

void pacer_free(struct pacer *s)
{
	if (!s)
		return;
	for (size_t i = 0; i < s->n_tenants; i++)
		free(s->tenants[i].name);
	free(s->tenants);
	free(s->theap);
	free(s->nodes);
	free(s->dheap);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static bool tenants_reserve(struct pacer *s)
{
	if (s->n_tenants < s->cap_tenants)
		return true;
	size_t cap = s->cap_tenants ? s->cap_tenants * 2 : 8;
	struct tenant *t = realloc(s->tenants, cap * sizeof(*t));
	if (!t)
		return false;
	s->tenants = t;
	uint32_t *h = realloc(s->theap, cap * sizeof(*h));
	if (!h)
		return false; /* the larger tenant array is kept; capacity stays as it was */
	s->theap = h;
	s->cap_tenants = cap;
	return true;
}

bool pacer_add_tenant(struct pacer *s, const char *name, double limit, size_t *index_out)
{
	if (!name || strnlen(name, PACER_NAME_MAX) >= PACER_NAME_MAX ||
	    (limit > 0 && !limit_valid(limit)) || isnan(limit))
		return false;
	pthread_mutex_lock(&s->lock);
	char *copy = NULL;
	if (s->n_tenants >= PACER_MAX_TENANTS || !tenants_reserve(s) || !(copy = strdup(name)))
		goto fail;
	struct tenant *tn = &s->tenants[s->n_tenants];
	memset(tn, 0, sizeof(*tn));
	tn->name = copy;
	tn->uses_default = !(limit > 0);
	tn->limit = tn->rate = tn->uses_default ? s->lim.per_tenant_limit : limit;
	tn->window = slow_start_window(s);
	tn->bucket.last_ms = INT64_MIN;
	tn->bucket.tokens = INFINITY;
	tenant_bucket_set(s, tn);
	tn->blocked_until = tn->md_until = tn->ready_since = INT64_MIN;
	tn->head = tn->tail = NIL;
	tn->heap_pos = SIZE_MAX;
	*index_out = s->n_tenants++;
	pthread_mutex_unlock(&s->lock);
	return true;
fail:
	pthread_mutex_unlock(&s->lock);
	free(copy);
	return false;
}

/* ---- queueing ---- */

static bool enqueue(struct pacer *s, size_t tenant, void *job, int64_t not_before, int64_t now,
                    bool bounded)
{
	bool ok = false;
	pthread_mutex_lock(&s->lock);
	see_time(s, now);
	if (tenant >= s->n_tenants)
		goto out;
	if (bounded && s->queued >= s->max_queued)
		goto out;
	if (s->free_head == NIL && !pool_grow(s))
		goto out;
	uint32_t n = s->free_head;
	s->free_head = s->nodes[n].next;
	s->nodes[n] = (struct node){.job = job,
	                            .not_before = not_before,
	                            .seq = s->seq++,
	                            .tenant = (uint32_t)tenant,
	                            .next = NIL};
	s->queued++;
	if (not_before <= now) {
		fifo_append(s, n, now);
	} else {
		s->tenants[tenant].delayed++;
		dheap_push(s, n);
	}
	ok = true;
out:
	pthread_mutex_unlock(&s->lock);
	return ok;
}

bool pacer_push(struct pacer *s, size_t tenant, void *job, int64_t not_before_ms, int64_t now_ms)
{
	return enqueue(s, tenant, job, not_before_ms, now_ms, true);
}

bool pacer_requeue(struct pacer *s, size_t tenant, void *job, int64_t not_before_ms, int64_t now_ms)
{
	return enqueue(s, tenant, job, not_before_ms, now_ms, false);
}

/* ---- taking ---- */

/* Hands out the head job of tenant t, spending a token of its bucket and of the global one. */
static void take_from(struct pacer *s, uint32_t t, int64_t now, void **job)
{
	struct tenant *tn = &s->tenants[t];
	uint32_t n = fifo_pop(s, t);
	*job = s->nodes[n].job;
	node_release(s, n);
	tn->bucket.tokens -= 1.0;
	s->global.tokens -= 1.0;
	tn->taken++;
	if (tn->ready)
		tenant_new_turn(s, t, now);
}

/* When the next job may leave: the tenant heap's top against the global bucket, or a delayed
 * job's not-before (which may wake a tenant that is eligible sooner). */
static int64_t wake_time(const struct pacer *s)
{
	int64_t wake = s->n_dheap ? s->nodes[s->dheap[0]].not_before : INT64_MAX;
	if (s->n_theap) {
		int64_t ready = max64(s->tenants[s->theap[0]].key, bucket_token_time(&s->global));
		wake = min64(wake, ready);
	}
	return wake;
}

enum pacer_take_status pacer_take(struct pacer *s, int64_t now_ms, void **job, size_t *tenant,
                                  int64_t *wake_at_ms)
{
	pthread_mutex_lock(&s->lock);
	see_time(s, now_ms);
	promote_due(s, now_ms);
	bucket_refill(&s->global, now_ms);
	enum pacer_take_status st = s->queued ? PACER_WAIT : PACER_EMPTY;
	while (s->n_theap && bucket_has_token(&s->global)) {
		uint32_t t = s->theap[0];
		struct tenant *tn = &s->tenants[t];
		if (tn->key > now_ms)
			break;
		bucket_refill(&tn->bucket, now_ms);
		if (!bucket_has_token(&tn->bucket) || tn->blocked_until > now_ms) {
			tenant_rekey(s, t); /* cannot happen with a true key; moves it past now */
			continue;
		}
		take_from(s, t, now_ms, job);
		*tenant = t;
		st = PACER_TAKEN;
		break;
	}
	*wake_at_ms = st == PACER_TAKEN ? now_ms : wake_time(s);
	pthread_mutex_unlock(&s->lock);
	return st;
}

bool pacer_blocked(struct pacer *s, size_t tenant, int64_t now_ms)
{
	pthread_mutex_lock(&s->lock);
	bool blocked = tenant < s->n_tenants && s->tenants[tenant].blocked_until > now_ms;
	pthread_mutex_unlock(&s->lock);
	return blocked;
}

/* ---- results: AIMD and blocks ---- */

static void tenant_set_rate(struct pacer *s, struct tenant *tn, double rate)
{
	double floor_rate = tn->limit * PACER_FLOOR_FRACTION;
	tn->rate = rate < floor_rate ? floor_rate : rate > tn->limit ? tn->limit : rate;
	tenant_bucket_set(s, tn);
}

/*
 * Blocks a tenant until `until` (a Retry-After). Its bucket earns nothing while blocked: one
 * probe leaves when the block ends, then the tenant is paced at its rate. A burst at the
 * block's end (tokens earned during it) would overrun a server whose limit is below ours, and
 * those requests would all be in flight, inside the next advertised window, when its answer
 * comes back.
 */
static void tenant_block(struct tenant *tn, int64_t until)
{
	tn->blocked_until = max64(tn->blocked_until, until);
	tn->bucket.tokens = 1.0;
	tn->bucket.last_ms = max64(tn->bucket.last_ms, tn->blocked_until);
}

static void on_throttled(struct pacer *s, struct tenant *tn, int64_t retry_after, int64_t now)
{
	tn->throttled++;
	int64_t block = retry_after > 0 ? retry_after : (int64_t)ceil(window_ms(s) / tn->limit);
	tn->window = slow_start_window(s); /* the server's real limit is not what we knew */
	if (now >= tn->md_until) {
		tn->knee = tn->rate * PACER_KNEE;
		tenant_set_rate(s, tn, tn->rate * PACER_MD_FACTOR);
		tn->md_until = now + block;
	}
	tenant_block(tn, now + block); /* the server says we are over: nothing saved up is real */
}

void pacer_on_result(struct pacer *s, size_t tenant, enum pacer_outcome outcome,
                     int64_t retry_after_ms, int64_t now_ms)
{
	int64_t blocked_until = -1; /* a 429's block, for the observer */
	pthread_mutex_lock(&s->lock);
	see_time(s, now_ms);
	if (tenant >= s->n_tenants)
		goto out;
	struct tenant *tn = &s->tenants[tenant];
	bucket_refill(&tn->bucket, now_ms); /* tokens earned so far count at the old rate */
	switch (outcome) {
	case PACER_OK:
		tn->succeeded++;
		tn->window += 1.0; /* slow start: one token more of burst per success */
		tenant_set_rate(
		    s, tn,
		    tn->rate + tn->limit * (tn->rate < tn->knee ? PACER_AI_FAST : PACER_AI_SLOW));
		break;
	case PACER_THROTTLED:
		on_throttled(s, tn, retry_after_ms, now_ms);
		blocked_until = tn->blocked_until;
		break;
	case PACER_FAILED_OTHER:
		tn->failed++;
		if (retry_after_ms > 0)
			tenant_block(tn, now_ms + retry_after_ms);
		break;
	}
	tenant_rekey(s, (uint32_t)tenant);
out:;
	pacer_throttle_fn *observer = s->on_throttle;
	void *observer_arg = s->on_throttle_arg;
	pthread_mutex_unlock(&s->lock);
	if (blocked_until >= 0 && observer)
		observer(tenant, blocked_until, observer_arg);
}

void pacer_set_throttle_observer(struct pacer *s, pacer_throttle_fn *fn, void *arg)
{
	pthread_mutex_lock(&s->lock);
	s->on_throttle = fn;
	s->on_throttle_arg = arg;
	pthread_mutex_unlock(&s->lock);
}

void pacer_block(struct pacer *s, size_t tenant, int64_t until_ms, int64_t now_ms)
{
	pthread_mutex_lock(&s->lock);
	see_time(s, now_ms);
	if (tenant < s->n_tenants && until_ms > now_ms) {
		struct tenant *tn = &s->tenants[tenant];
		bucket_refill(&tn->bucket, now_ms);
		tenant_block(tn, until_ms);
		tenant_rekey(s, (uint32_t)tenant);
	}
	pthread_mutex_unlock(&s->lock);
}

/* ---- reload ---- */

/* Applies a new configured limit (and the current window) keeping the AIMD position. */
static void tenant_apply_limit(struct pacer *s, uint32_t t, double limit)
{
	struct tenant *tn = &s->tenants[t];
	double share = tn->rate / tn->limit;
	tn->knee *= limit / tn->limit;
	tn->limit = limit;
	tenant_set_rate(s, tn, share * limit);
	tenant_rekey(s, t);
}

bool pacer_set_limits(struct pacer *s, const struct pacer_limits *lim)
{
	if (!limits_valid(lim))
		return false;
	pthread_mutex_lock(&s->lock);
	int64_t now = s->latest_now;
	if (now != INT64_MIN) {
		bucket_refill(&s->global, now);
		for (size_t i = 0; i < s->n_tenants; i++)
			bucket_refill(&s->tenants[i].bucket, now);
	}
	s->lim = *lim;
	bucket_set(&s->global, lim->global_limit, window_ms(s));
	for (size_t i = 0; i < s->n_tenants; i++) {
		struct tenant *tn = &s->tenants[i];
		tenant_apply_limit(s, (uint32_t)i,
		                   tn->uses_default ? lim->per_tenant_limit : tn->limit);
	}
	pthread_mutex_unlock(&s->lock);
	return true;
}

bool pacer_set_tenant_limit(struct pacer *s, size_t tenant, double limit)
{
	if (isnan(limit) || (limit > 0 && !limit_valid(limit)))
		return false;
	pthread_mutex_lock(&s->lock);
	bool ok = tenant < s->n_tenants;
	if (ok) {
		struct tenant *tn = &s->tenants[tenant];
		if (s->latest_now != INT64_MIN)
			bucket_refill(&tn->bucket, s->latest_now);
		tn->uses_default = !(limit > 0);
		tenant_apply_limit(s, (uint32_t)tenant,
		                   tn->uses_default ? s->lim.per_tenant_limit : limit);
	}
	pthread_mutex_unlock(&s->lock);
	return ok;
}

/* ---- drain and stats ---- */

size_t pacer_drain(struct pacer *s, void **jobs, size_t cap)
{
	size_t k = 0;
	pthread_mutex_lock(&s->lock);
	while (k < cap && s->n_theap) {
		uint32_t n = fifo_pop(s, s->theap[0]);
		jobs[k++] = s->nodes[n].job;
		node_release(s, n);
	}
	while (k < cap && s->n_dheap) {
		uint32_t n = s->dheap[--s->n_dheap]; /* the last leaf: the heap stays valid */
		s->tenants[s->nodes[n].tenant].delayed--;
		jobs[k++] = s->nodes[n].job;
		node_release(s, n);
	}
	pthread_mutex_unlock(&s->lock);
	return k;
}

size_t pacer_queued_total(struct pacer *s)
{
	pthread_mutex_lock(&s->lock);
	size_t q = s->queued;
	pthread_mutex_unlock(&s->lock);
	return q;
}

/* Whole tokens a bucket will hold at now, without refilling it (a read-only view). */
static double bucket_tokens_at(const struct bucket *b, int64_t now)
{
	double tokens = b->tokens;
	if (b->last_ms != INT64_MIN && now > b->last_ms)
		tokens = b->tokens + (double)(now - b->last_ms) * b->rate_per_ms;
	return floor((tokens < b->cap ? tokens : b->cap) + TOKEN_EPS);
}

size_t pacer_sendable(struct pacer *s, int64_t now_ms, size_t at_most)
{
	pthread_mutex_lock(&s->lock);
	double global = bucket_tokens_at(&s->global, now_ms);
	size_t sendable = 0;
	for (size_t i = 0; i < s->n_theap && sendable < at_most; i++) {
		const struct tenant *tn = &s->tenants[s->theap[i]];
		if (tn->blocked_until > now_ms)
			continue;
		double tokens = bucket_tokens_at(&tn->bucket, now_ms);
		if (tokens >= 1.0)
			sendable += (double)tn->ready < tokens ? tn->ready : (size_t)tokens;
	}
	if (global < 1.0)
		sendable = 0;
	else if ((double)sendable > global)
		sendable = (size_t)global;
	pthread_mutex_unlock(&s->lock);
	return sendable < at_most ? sendable : at_most;
}

size_t pacer_tenant_count(struct pacer *s)
{
	pthread_mutex_lock(&s->lock);
	size_t n = s->n_tenants;
	pthread_mutex_unlock(&s->lock);
	return n;
}

bool pacer_tenant_stats(struct pacer *s, size_t tenant, struct pacer_tenant_stats *out)
{
	pthread_mutex_lock(&s->lock);
	bool ok = tenant < s->n_tenants;
	if (ok) {
		const struct tenant *tn = &s->tenants[tenant];
		*out = (struct pacer_tenant_stats){
		    .name = tn->name,
		    .queued = tn->ready + tn->delayed,
		    .ready = tn->ready,
		    .delayed = tn->delayed,
		    .configured_limit = tn->limit,
		    .current_rate = tn->rate,
		    .blocked_until_ms = tn->blocked_until,
		    .taken = tn->taken,
		    .succeeded = tn->succeeded,
		    .throttled = tn->throttled,
		    .failed = tn->failed,
		};
	}
	pthread_mutex_unlock(&s->lock);
	return ok;
}

/* ---- ETA of the queued work (the model is eta.c) ---- */

bool pacer_backlog_eta(struct pacer *s, double unqueued, struct eta_tenant *out, size_t n,
                       double *total_s)
{
	pthread_mutex_lock(&s->lock);
	if (n > s->n_tenants)
		n = s->n_tenants;
	double queued = 0, global = s->lim.global_limit, window = s->lim.window_s;
	for (size_t i = 0; i < n; i++) {
		out[i] = (struct eta_tenant){
		    .events = (double)(s->tenants[i].ready + s->tenants[i].delayed),
		    .rate = s->tenants[i].rate};
		queued += out[i].events;
	}
	pthread_mutex_unlock(&s->lock);
	if (n == 0) {
		*total_s = 0;
		return true;
	}
	struct eta_tenant *all = calloc(n, sizeof *all);
	if (!all)
		return false;
	for (size_t i = 0; i < n; i++) {
		all[i] = out[i];
		double share = queued > 0 ? out[i].events / queued : i == 0;
		all[i].events += unqueued > 0 ? unqueued * share : 0;
	}
	double ignored;
	bool ok = eta_compute(out, n, global, 0, window, &ignored) &&
	          eta_compute(all, n, global, 0, window, total_s);
	free(all);
	return ok;
}
