/*
 * pacer.h - the scheduler in front of Graph POST /chats: per-tenant and global token buckets,
 * AIMD on 429, Retry-After blocks, per-tenant queues with delayed (backoff) jobs, one bound.
 *
 * Pure logic: no I/O and no clocks. Every time is int64 milliseconds on one monotonic clock,
 * passed in by the caller. Thread-safe: one internal mutex; the Kafka poll thread pushes, HTTP
 * worker threads take and report results. Every operation is O(log n) in the number of queued
 * jobs and tenants. Memory is allocated in pacer_new (max_queued jobs, touched lazily), when a
 * tenant is added, and only if requeued retries push the queue beyond max_queued.
 *
 * A job leaves (pacer_take) only when all of these hold:
 *   - its not-before time has passed (retries with backoff);
 *   - its tenant is not blocked by a Retry-After (or the default block after a bare 429);
 *   - its tenant's bucket holds a whole token (rate = current rate / window, burst = current
 *     rate, no more than the slow-start window (pacer_limits.slow_start_tokens), at least one);
 *   - the global bucket holds a whole token (rate = global_limit / window, burst = global_limit).
 * Among tenants that may send, the one that has waited longest goes first (round-robin when the
 * global bucket is the bottleneck); a blocked or empty-handed tenant never delays another.
 *
 * AIMD (see docs/scheduling.md): a tenant's current rate starts at its configured limit. On a
 * 429 it halves (floor: 5% of the limit), and it is blocked until now + Retry-After (absent:
 * one token interval at the configured limit, window / limit); its bucket earns nothing while
 * blocked, so one probe leaves when the block ends and the rest are paced, not a burst; 429s
 * arriving while that block is still in force do not halve again (they are the same episode:
 * requests that were already in flight). Each success adds back 5% of the configured limit
 * while the rate is below the knee (0.7 x the rate that drew the last 429), 1% above it, up to
 * the limit: quick recovery from a spurious 429, careful probing near the server's real limit.
 * A Retry-After is honoured from the moment the caller reports it: requests already in flight
 * cannot be recalled, everything taken afterwards waits for the block to end.
 */
#ifndef CHATPROV_PACER_H
#define CHATPROV_PACER_H

#include "common.h"

/* A bucket "holds a whole token" at 1 - PACER_TOKEN_EPS: absorbs rounding of the refill
 * arithmetic (eta.c models the buckets with the same rule). */
#define PACER_TOKEN_EPS 1e-9

/* Bounds on what pacer_new / pacer_add_tenant accept. */
#define PACER_MAX_TENANTS 4096
#define PACER_MAX_QUEUED  (1u << 30)
#define PACER_NAME_MAX    256

/* Requests allowed per window; e.g. Graph's 20 per tenant and 200 global per 10 s. */
struct pacer_limits {
	double per_tenant_limit; /* default for tenants added with limit <= 0 */
	double global_limit;     /* over all tenants */
	double window_s;         /* length of the window in seconds */
	/*
	 * Slow start: a tenant's bucket holds at most this many tokens at first (0: a full
	 * bucket, the whole window's limit); each success lets it hold one more, up to the
	 * window's limit, and a 429 starts it over. So the first window paces out instead of
	 * sending a configured limit that may be far above Graph's real one in one burst.
	 */
	double slow_start_tokens;
};

/* The daemon's slow start (pacer_limits.slow_start_tokens). */
#define PACER_SLOW_START_TOKENS 4.0

enum pacer_outcome {
	PACER_OK,           /* Graph accepted the request (201/202) */
	PACER_THROTTLED,    /* 429 */
	PACER_FAILED_OTHER, /* anything else; a Retry-After with it (503) still blocks the tenant */
};

enum pacer_take_status {
	PACER_TAKEN, /* *job and *tenant are set; one token of each bucket is spent */
	PACER_WAIT,  /* jobs are queued but none may leave now; *wake_at_ms says when one may */
	PACER_EMPTY, /* nothing queued; *wake_at_ms = INT64_MAX */
};

struct pacer_tenant_stats {
	const char *name;         /* valid until pacer_free */
	size_t queued;            /* ready + delayed */
	size_t ready;             /* not-before passed, waiting for tokens or a block */
	size_t delayed;           /* waiting for their not-before time */
	double configured_limit;  /* per window */
	double current_rate;      /* per window, after AIMD */
	int64_t blocked_until_ms; /* Retry-After block; in the past when not blocked */
	uint64_t taken, succeeded, throttled, failed;
};

struct pacer;
struct eta_tenant;

/*
 * max_queued bounds what pacer_push accepts (new work). False on invalid limits (not finite,
 * <= 0), max_queued 0 or above PACER_MAX_QUEUED, or out of memory.
 */
bool pacer_new(const struct pacer_limits *lim, size_t max_queued, struct pacer **out) CP_MUSTCHECK;
void pacer_free(struct pacer *s);

/* Adds a tenant (limit <= 0: lim->per_tenant_limit); indexes are 0, 1, 2... in add order. */
bool pacer_add_tenant(struct pacer *s, const char *name, double limit,
                      size_t *index_out) CP_MUSTCHECK;

/*
 * Queues new work. False (the job stays the caller's) if the tenant index is unknown or
 * max_queued jobs are queued (the caller bounds its intake before that). not_before_ms <=
 * now_ms means ready at once.
 */
bool pacer_push(struct pacer *s, size_t tenant, void *job, int64_t not_before_ms,
                int64_t now_ms) CP_MUSTCHECK;

/*
 * Queues a job that was taken again (a retry), typically with not_before = now + backoff.
 * Not subject to max_queued, so a retry is never refused because new work filled the queue:
 * the extra room is bounded by the jobs the caller holds outside the scheduler (its in-flight
 * bound). False only for an unknown tenant or when memory runs out.
 */
bool pacer_requeue(struct pacer *s, size_t tenant, void *job, int64_t not_before_ms,
                   int64_t now_ms) CP_MUSTCHECK;

/*
 * Whether a Retry-After (or the default block after a bare 429) holds the tenant at now_ms.
 * A worker asks right before a taken POST goes on the wire: a 429 that came back meanwhile
 * holds it too (the caller requeues it). False for an unknown tenant.
 */
bool pacer_blocked(struct pacer *s, size_t tenant, int64_t now_ms);

/* Takes the next job that may leave now; see enum pacer_take_status. */
enum pacer_take_status pacer_take(struct pacer *s, int64_t now_ms, void **job, size_t *tenant,
                                  int64_t *wake_at_ms);

/*
 * Reports how a taken job's request ended. retry_after_ms: the server's Retry-After as a
 * delay from now (<= 0: none). Drives AIMD and the tenant's block (see the top of this file).
 */
void pacer_on_result(struct pacer *s, size_t tenant, enum pacer_outcome outcome,
                     int64_t retry_after_ms, int64_t now_ms);

/*
 * Called, outside the scheduler's lock, on the thread that reported it, each time a 429
 * blocks a tenant: until_ms is when the block ends (the caller's clock). The pipeline tells
 * the other instances ([kafka] limits_topic). NULL: nobody is told.
 */
typedef void pacer_throttle_fn(size_t tenant, int64_t until_ms, void *arg);
void pacer_set_throttle_observer(struct pacer *s, pacer_throttle_fn *fn, void *arg);

/*
 * Blocks the tenant until until_ms as a Retry-After would, without counting a 429 or
 * changing its rate (another instance was throttled; its own 429s, if any, drive AIMD here),
 * and without telling the observer. Unknown tenants and blocks already past change nothing.
 */
void pacer_block(struct pacer *s, size_t tenant, int64_t until_ms, int64_t now_ms);

/*
 * SIGHUP reload. New limits apply from the latest time the scheduler was given (buckets are
 * refilled at the old rates up to then); a tenant keeps its AIMD position as a fraction of its
 * limit. pacer_set_tenant_limit with limit <= 0 returns the tenant to the default. Invalid
 * values (not finite, <= 0; the config validates them first) and unknown tenants change
 * nothing: the return value says whether the change was applied.
 */
bool pacer_set_limits(struct pacer *s, const struct pacer_limits *lim);
bool pacer_set_tenant_limit(struct pacer *s, size_t tenant, double limit);

/* Shutdown: removes up to cap queued jobs (ready and delayed) into jobs[]; call until 0. */
size_t pacer_drain(struct pacer *s, void **jobs, size_t cap);

/* Jobs queued over all tenants (pushed and requeued, ready and delayed). */
size_t pacer_queued_total(struct pacer *s);

/*
 * Ready jobs that could leave now if workers asked: per tenant not blocked, as many as its
 * bucket holds whole tokens, in all no more than the global bucket holds; at most at_most
 * (the scan stops there). Work waiting for tokens or a block is not counted. Read-only: the
 * caller uses it to keep only a bounded read-ahead of sendable work in memory.
 */
size_t pacer_sendable(struct pacer *s, int64_t now_ms, size_t at_most);

size_t pacer_tenant_count(struct pacer *s);
bool pacer_tenant_stats(struct pacer *s, size_t tenant,
                        struct pacer_tenant_stats *out) CP_MUSTCHECK;

/*
 * The ETA of the work queued now plus `unqueued` events not yet read (consumer lag, work
 * still being decoded) at the rates the scheduler currently allows (AIMD included, the
 * buckets taken as empty). Tenant i of the n given gets out[i] = its queued work and its ETA;
 * *total_s covers the unqueued events too, spread over the tenants in proportion to what each
 * has queued (all on tenant 0 when nothing is queued): the queue is the best sample of what
 * the backlog holds. False when out of memory.
 */
bool pacer_backlog_eta(struct pacer *s, double unqueued, struct eta_tenant *out, size_t n,
                       double *total_s) CP_MUSTCHECK;

#endif
