/* test_pacer.c - scheduler: buckets, AIMD, blocks, fairness, bounds, and simulated servers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eta.h"
#include "pacer.h"

#define JOB(i)    ((void *)(uintptr_t)((i) + 1))
#define JOB_ID(p) ((size_t)(uintptr_t)(p)-1)

static struct pacer *new_pacer(double tenant_limit, double global_limit, double window_s,
                               size_t max_queued)
{
	struct pacer_limits lim = {tenant_limit, global_limit, window_s, 0};
	struct pacer *s = NULL;
	assert_true(pacer_new(&lim, max_queued, &s));
	return s;
}

static size_t add_tenant(struct pacer *s, const char *name, double limit)
{
	size_t idx = SIZE_MAX;
	assert_true(pacer_add_tenant(s, name, limit, &idx));
	return idx;
}

static void push_n(struct pacer *s, size_t tenant, size_t first_id, size_t n, int64_t now)
{
	for (size_t i = 0; i < n; i++)
		assert_true(pacer_push(s, tenant, JOB(first_id + i), now, now));
}

static enum pacer_take_status take(struct pacer *s, int64_t now, size_t *id, size_t *tenant,
                                   int64_t *wake)
{
	void *job = NULL;
	size_t t = SIZE_MAX;
	int64_t w = -1;
	enum pacer_take_status st = pacer_take(s, now, &job, &t, &w);
	if (st == PACER_TAKEN) {
		assert_non_null(job);
		if (id)
			*id = JOB_ID(job);
		if (tenant)
			*tenant = t;
	} else {
		assert_true(w > now); /* a waiter never spins */
	}
	if (wake)
		*wake = w;
	return st;
}

static struct pacer_tenant_stats stats_of(struct pacer *s, size_t tenant)
{
	struct pacer_tenant_stats st;
	assert_true(pacer_tenant_stats(s, tenant, &st));
	return st;
}

/* ---- basic behaviour ---- */

static void test_empty_and_errors(void **state)
{
	(void)state;
	struct pacer_limits bad[] = {{0, 10, 10, 0},   {10, -1, 10, 0},       {10, 10, 0, 0},
	                             {NAN, 10, 10, 0}, {10, INFINITY, 10, 0}, {10, 10, 10, -1}};
	struct pacer *s = NULL;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(pacer_new(&bad[i], 10, &s));
	struct pacer_limits ok = {20, 200, 10, 0};
	assert_false(pacer_new(&ok, 0, &s));
	s = new_pacer(20, 200, 10, 10);
	size_t idx, id, t;
	int64_t wake = 0;
	void *job;
	assert_int_equal(pacer_take(s, 0, &job, &t, &wake), PACER_EMPTY);
	assert_true(wake == INT64_MAX);
	assert_false(pacer_add_tenant(s, NULL, 10, &idx));
	assert_false(pacer_add_tenant(s, "x", NAN, &idx));
	assert_false(pacer_add_tenant(s, "x", INFINITY, &idx));
	char longname[PACER_NAME_MAX + 1];
	memset(longname, 'a', sizeof longname - 1);
	longname[PACER_NAME_MAX] = '\0';
	assert_false(pacer_add_tenant(s, longname, 10, &idx));
	assert_int_equal(add_tenant(s, "default", 0), 0);
	assert_int_equal(add_tenant(s, "other", 5), 1);
	assert_int_equal(pacer_tenant_count(s), 2);
	assert_false(pacer_push(s, 2, JOB(0), 0, 0)); /* unknown tenant */
	assert_false(pacer_requeue(s, 9, JOB(0), 0, 0));
	struct pacer_tenant_stats st;
	assert_false(pacer_tenant_stats(s, 2, &st));
	assert_string_equal(stats_of(s, 1).name, "other");
	assert_true(stats_of(s, 0).configured_limit == 20);
	assert_true(stats_of(s, 1).configured_limit == 5);
	pacer_on_result(s, 7, PACER_THROTTLED, 1000, 0); /* ignored */
	push_n(s, 0, 0, 1, 0);
	assert_int_equal(take(s, 0, &id, &t, NULL), PACER_TAKEN);
	assert_int_equal(id, 0);
	assert_int_equal(t, 0);
	pacer_free(s);
	pacer_free(NULL);
}

static void test_bucket_burst_then_rate(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100); /* 20 per 2 s: one token per 100 ms */
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 30, 0);
	size_t id;
	int64_t wake;
	for (size_t i = 0; i < 20; i++) {
		assert_int_equal(take(s, 0, &id, NULL, NULL), PACER_TAKEN);
		assert_int_equal(id, i); /* FIFO */
	}
	assert_int_equal(take(s, 0, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 100);
	assert_int_equal(take(s, 99, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 100);
	assert_int_equal(take(s, 100, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(id, 20);
	assert_int_equal(take(s, 100, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 200);
	/* 450 ms later: 4.5 tokens, 4 whole ones */
	for (int i = 0; i < 4; i++)
		assert_int_equal(take(s, 550, NULL, NULL, NULL), PACER_TAKEN);
	assert_int_equal(take(s, 550, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 600);
	/* time going backwards is treated as standing still */
	assert_int_equal(take(s, 10, NULL, NULL, NULL), PACER_WAIT);
	/* the burst never exceeds the limit, however long the pause */
	int n = 0;
	while (take(s, 1000000, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 5); /* only 5 left in the queue */
	push_n(s, a, 100, 30, 1000000);
	n = 0;
	while (take(s, 2000000, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 20);
	assert_int_equal(pacer_queued_total(s), 10);
	assert_int_equal(stats_of(s, a).taken, 50);
	pacer_free(s);
}

static void test_delayed_jobs_do_not_block_ready(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100);
	size_t a = add_tenant(s, "a", 0);
	assert_true(pacer_push(s, a, JOB(1), 5000, 0));
	assert_true(pacer_push(s, a, JOB(2), 3000, 0));
	assert_true(pacer_requeue(s, a, JOB(3), 3000, 0));
	assert_true(pacer_push(s, a, JOB(4), 0, 0));
	assert_int_equal(stats_of(s, a).delayed, 3);
	assert_int_equal(stats_of(s, a).ready, 1);
	size_t id;
	int64_t wake;
	assert_int_equal(take(s, 0, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(id, 4);
	assert_int_equal(take(s, 0, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 3000);
	assert_int_equal(take(s, 2999, NULL, NULL, &wake), PACER_WAIT);
	/* due ones in not-before order, ties in push order */
	assert_int_equal(take(s, 3000, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(id, 2);
	assert_int_equal(take(s, 3000, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(id, 3);
	assert_int_equal(take(s, 3000, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 5000);
	assert_int_equal(take(s, 6000, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(id, 1);
	pacer_free(s);
}

/* ---- AIMD and Retry-After ---- */

static void test_throttle_halves_blocks_and_recovers(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100);
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 50, 0);
	pacer_on_result(s, a, PACER_THROTTLED, 3000, 0);
	struct pacer_tenant_stats st = stats_of(s, a);
	assert_true(st.current_rate == 10);
	assert_int_equal(st.blocked_until_ms, 3000);
	assert_int_equal(st.throttled, 1);
	int64_t wake;
	assert_int_equal(take(s, 0, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 3000);
	assert_int_equal(take(s, 2999, NULL, NULL, &wake), PACER_WAIT);
	/* 429s of requests already in flight: same episode, no second halving, block extended */
	pacer_on_result(s, a, PACER_THROTTLED, 3500, 100);
	st = stats_of(s, a);
	assert_true(st.current_rate == 10);
	assert_int_equal(st.blocked_until_ms, 3600);
	assert_int_equal(take(s, 3599, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 3600);
	/* nothing was earned during the block: one probe at its end, then 10 per 2 s */
	int n = 0;
	while (take(s, 3600, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 1);
	assert_int_equal(take(s, 3600, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 3800);
	n = 0;
	while (take(s, 3999, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 1);
	/* after the block: a new 429 halves again, down to the 5% floor */
	pacer_on_result(s, a, PACER_THROTTLED, 1000, 4000);
	assert_true(stats_of(s, a).current_rate == 5);
	for (int64_t t = 5000; t < 20000; t += 1000)
		pacer_on_result(s, a, PACER_THROTTLED, 1000, t);
	assert_true(stats_of(s, a).current_rate == 1); /* 5% of 20 */
	/* additive increase at the floor (above the knee, 0.7 x 1.25): 1% of the limit */
	pacer_on_result(s, a, PACER_OK, 0, 20000);
	assert_true(fabs(stats_of(s, a).current_rate - 1.2) < 1e-9);
	for (int i = 0; i < 30; i++)
		pacer_on_result(s, a, PACER_OK, 0, 20000);
	assert_true(fabs(stats_of(s, a).current_rate - 7.2) < 1e-9);
	for (int i = 0; i < 200; i++)
		pacer_on_result(s, a, PACER_OK, 0, 20000);
	assert_true(stats_of(s, a).current_rate == 20); /* capped at the limit */
	assert_int_equal(stats_of(s, a).succeeded, 231);
	/* below the knee (0.7 x the rate that drew the 429) recovery is fast: 5% per success */
	size_t b = add_tenant(s, "b", 0);
	pacer_on_result(s, b, PACER_THROTTLED, 100, 0);
	double want[] = {11, 12, 13, 14, 14.2, 14.4};
	for (size_t i = 0; i < 6; i++) {
		pacer_on_result(s, b, PACER_OK, 0, 200);
		assert_true(fabs(stats_of(s, b).current_rate - want[i]) < 1e-9);
	}
	pacer_free(s);
}

/* Slow start: a configured limit far above Graph's real one must not leave in one burst. */
static void test_slow_start_grows_the_burst_per_success(void **state)
{
	(void)state;
	struct pacer_limits lim = {200, 2000, 10, 4}; /* 20/s, a token every 50 ms */
	struct pacer *s = NULL;
	assert_true(pacer_new(&lim, 1000, &s));
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 500, 0);
	int n = 0;
	while (take(s, 0, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 4); /* not 200 */
	/* a long pause earns no more than the window: 4 */
	n = 0;
	while (take(s, 60000, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 4);
	/* each success lets the bucket hold one token more */
	for (int i = 0; i < 8; i++)
		pacer_on_result(s, a, PACER_OK, 0, 60000);
	n = 0;
	while (take(s, 120000, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 12);
	/* a 429 starts it over */
	pacer_on_result(s, a, PACER_THROTTLED, 1000, 120000);
	assert_true(pacer_blocked(s, a, 120999));
	assert_false(pacer_blocked(s, a, 121000));
	assert_false(pacer_blocked(s, 7, 0));
	n = 0;
	while (take(s, 300000, NULL, NULL, NULL) == PACER_TAKEN)
		n++;
	assert_int_equal(n, 4);
	assert_true(eta_first_burst(200, 4) == 4);
	assert_true(eta_first_burst(2, 4) == 2);
	assert_true(eta_first_burst(200, 0) == 200);
	pacer_free(s);
}

static void test_throttle_without_retry_after(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 10, 100);
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 5, 0);
	pacer_on_result(s, a, PACER_THROTTLED, 0, 1000);
	/* default block: one token interval at the configured limit, 10 s / 20 = 500 ms */
	assert_int_equal(stats_of(s, a).blocked_until_ms, 1500);
	int64_t wake;
	assert_int_equal(take(s, 1000, NULL, NULL, &wake), PACER_WAIT);
	/* blocked until 1500, when one probe may leave; the next needs a token at 10 per 10 s */
	assert_int_equal(wake, 1500);
	assert_int_equal(take(s, 1500, NULL, NULL, NULL), PACER_TAKEN);
	assert_int_equal(take(s, 1500, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 2500);
	pacer_free(s);
}

static void test_other_failure_with_retry_after_blocks_only(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100);
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 5, 0);
	pacer_on_result(s, a, PACER_FAILED_OTHER, 0, 0);
	assert_int_equal(take(s, 0, NULL, NULL, NULL), PACER_TAKEN);
	pacer_on_result(s, a, PACER_FAILED_OTHER, 2000, 0); /* 503 with Retry-After: 2 */
	struct pacer_tenant_stats st = stats_of(s, a);
	assert_true(st.current_rate == 20);
	assert_int_equal(st.failed, 2);
	int64_t wake;
	assert_int_equal(take(s, 1999, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 2000);
	assert_int_equal(take(s, 2000, NULL, NULL, NULL), PACER_TAKEN);
	/* nothing was earned during the block: one probe, then paced (a token per 100 ms) */
	assert_int_equal(take(s, 2000, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 2100);
	/* a 429 during a 503 block still halves: the episodes are different */
	pacer_on_result(s, a, PACER_FAILED_OTHER, 5000, 2000);
	pacer_on_result(s, a, PACER_THROTTLED, 1000, 2100);
	assert_true(stats_of(s, a).current_rate == 10);
	assert_int_equal(stats_of(s, a).blocked_until_ms, 7000);
	pacer_free(s);
}

/* ---- fairness and no head-of-line blocking ---- */

struct throttle_seen {
	int calls;
	size_t tenant;
	int64_t until;
};

static void on_throttle(size_t tenant, int64_t until_ms, void *arg)
{
	struct throttle_seen *seen = arg;
	seen->calls++;
	seen->tenant = tenant;
	seen->until = until_ms;
}

/* A 429's block is told to the observer (shared with the other instances); nothing else is. */
static void test_the_observer_hears_each_429s_block_only(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100);
	struct throttle_seen seen = {0};
	pacer_set_throttle_observer(s, on_throttle, &seen);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 0);
	pacer_on_result(s, a, PACER_OK, 0, 0);
	pacer_on_result(s, a, PACER_FAILED_OTHER, 5000, 0); /* a 503's Retry-After: local */
	assert_int_equal(seen.calls, 0);
	pacer_on_result(s, b, PACER_THROTTLED, 3000, 100);
	assert_int_equal(seen.calls, 1);
	assert_int_equal(seen.tenant, b);
	assert_int_equal(seen.until, 3100);
	pacer_block(s, a, 9000, 200); /* another instance's block: not told again */
	assert_int_equal(seen.calls, 1);
	pacer_free(s);
}

/*
 * Another instance's block holds the tenant as its own 429 would, and ends when it says,
 * without halving the tenant's rate; a block already over and an unknown tenant change nothing.
 */
static void test_a_block_from_another_instance_holds_the_tenant(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 100);
	size_t a = add_tenant(s, "a", 0);
	push_n(s, a, 0, 2, 0);
	pacer_block(s, a, 5000, 0);
	pacer_block(s, a, 100, 50);  /* shorter: the longer block stands */
	pacer_block(s, 7, 9000, 50); /* unknown tenant */
	assert_true(pacer_blocked(s, a, 4999));
	int64_t wake;
	assert_int_equal(take(s, 4999, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 5000);
	assert_false(pacer_blocked(s, a, 5000));
	assert_int_equal(take(s, 5000, NULL, NULL, NULL), PACER_TAKEN);
	struct pacer_tenant_stats st = stats_of(s, a);
	assert_int_equal(st.throttled, 0);
	assert_true(st.current_rate == 20); /* no multiplicative decrease: no 429 drawn here */
	pacer_block(s, a, 4000, 6000);      /* over already */
	assert_false(pacer_blocked(s, a, 6000));
	pacer_free(s);
}

static void test_blocked_tenant_does_not_delay_others(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 1000);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 0);
	push_n(s, a, 0, 200, 0);
	push_n(s, b, 1000, 100, 0);
	/* a: one request got a 429 with a long Retry-After; its backlog sits ahead of b's */
	assert_int_equal(take(s, 0, NULL, NULL, NULL), PACER_TAKEN);
	pacer_on_result(s, a, PACER_THROTTLED, 60000, 0);
	int64_t now = 0, last_b = -1;
	size_t taken_b = 0, id, t;
	while (now < 60000) {
		int64_t wake;
		if (take(s, now, &id, &t, &wake) == PACER_TAKEN) {
			assert_int_equal(t, b);
			taken_b++;
			last_b = now;
			continue;
		}
		now = wake;
	}
	/* b at its own rate: 20 at once, then one per 100 ms */
	assert_int_equal(taken_b, 100);
	assert_int_equal(last_b, 8000);
	assert_int_equal(take(s, 60000, &id, &t, NULL), PACER_TAKEN);
	assert_int_equal(t, a);
	pacer_free(s);
}

static void test_round_robin_when_global_is_the_bottleneck(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(100, 10, 2, 1000);
	size_t t[3];
	for (size_t i = 0; i < 3; i++) {
		char name[8] = {(char)('a' + i), 0};
		t[i] = add_tenant(s, name, 0);
		push_n(s, t[i], i * 100, 30, 0);
	}
	int64_t now = 0;
	size_t seq[60], n = 0, id, tn;
	while (n < 60) {
		int64_t wake;
		if (take(s, now, &id, &tn, &wake) == PACER_TAKEN)
			seq[n++] = tn;
		else
			now = wake;
	}
	for (size_t i = 0; i + 2 < n; i += 3) {
		bool seen[3] = {false, false, false};
		for (size_t k = 0; k < 3; k++)
			seen[seq[i + k]] = true;
		assert_true(seen[0] && seen[1] && seen[2]);
	}
	/* 10 at once, then one per 200 ms: the 60th at 10 s */
	assert_int_equal(now, 10000);
	pacer_free(s);
}

static void test_global_caps_the_sum(void **state)
{
	(void)state;
	enum { TENANTS = 20 };
	struct pacer *s = new_pacer(20, 50, 2, 10000);
	for (size_t i = 0; i < TENANTS; i++) {
		char name[16];
		snprintf(name, sizeof name, "t%zu", i);
		push_n(s, add_tenant(s, name, 0), i * 1000, 200, 0);
	}
	size_t per[TENANTS] = {0}, total = 0, id, tn;
	int64_t now = 0;
	while (now <= 20000) {
		int64_t wake;
		if (take(s, now, &id, &tn, &wake) == PACER_TAKEN) {
			per[tn]++;
			total++;
			pacer_on_result(s, tn, PACER_OK, 0, now);
		} else {
			now = wake;
		}
	}
	/* burst 50, then 25 per second for 20 s */
	assert_true(total <= 50 + 500 + 1);
	assert_true(total >= 540);
	size_t lo = SIZE_MAX, hi = 0;
	for (size_t i = 0; i < TENANTS; i++) {
		lo = per[i] < lo ? per[i] : lo;
		hi = per[i] > hi ? per[i] : hi;
	}
	assert_true(hi - lo <= 1); /* round-robin: equal shares */
	pacer_free(s);
}

/* ---- bounds, drain, reload ---- */

static void test_max_queued_counts_delayed_jobs_too(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(1000, 1000, 1, 10);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 0);
	push_n(s, a, 0, 6, 0);
	for (size_t i = 0; i < 4; i++)
		assert_true(pacer_push(s, b, JOB(100 + i), 5000, 0)); /* delayed ones count too */
	assert_false(pacer_push(s, a, JOB(50), 0, 0));
	assert_int_equal(pacer_queued_total(s), 10);
	assert_int_equal(stats_of(s, a).queued, 6);
	assert_int_equal(stats_of(s, b).queued, 4);
	size_t id;
	for (int i = 0; i < 5; i++)
		assert_int_equal(take(s, 0, &id, NULL, NULL), PACER_TAKEN);
	push_n(s, a, 200, 5, 0);
	assert_false(pacer_push(s, a, JOB(50), 0, 0));
	/* retries of the 5 taken jobs are accepted beyond max_queued (the pool grows) */
	for (size_t i = 0; i < 5; i++)
		assert_true(pacer_requeue(s, a, JOB(300 + i), 0, 0));
	assert_int_equal(pacer_queued_total(s), 15);
	assert_false(pacer_push(s, a, JOB(50), 0, 0));
	void *jobs[32];
	assert_int_equal(pacer_drain(s, jobs, 32), 15);
	assert_int_equal(pacer_queued_total(s), 0);
	assert_true(pacer_push(s, a, JOB(50), 0, 0));
	pacer_free(s);
}

/* Sendable: ready, not blocked, covered by whole tokens of the tenant and global buckets. */
static void test_sendable_counts_whole_tokens_of_both_buckets(void **state)
{
	(void)state;
	/* 10 per 1 s per tenant (burst 10), 15 global */
	struct pacer *s = new_pacer(10, 15, 1, 1000);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 0);
	assert_int_equal(pacer_sendable(s, 0, 100), 0);
	push_n(s, a, 0, 4, 0);
	assert_int_equal(pacer_sendable(s, 0, 100), 4);
	assert_int_equal(pacer_sendable(s, 0, 3), 3); /* at_most caps the answer */
	push_n(s, a, 10, 20, 0);
	assert_int_equal(pacer_sendable(s, 0, 100), 10); /* a's burst */
	push_n(s, b, 100, 20, 0);
	assert_int_equal(pacer_sendable(s, 0, 100), 15);   /* the global burst */
	assert_true(pacer_push(s, b, JOB(500), 60000, 0)); /* delayed: never sendable yet */
	size_t id;
	for (int i = 0; i < 15; i++)
		assert_int_equal(take(s, 0, &id, NULL, NULL), PACER_TAKEN);
	assert_int_equal(pacer_sendable(s, 0, 100), 0); /* global bucket empty */
	/* 200 ms later: a and b earned 2 each, the global bucket 3 */
	assert_int_equal(pacer_sendable(s, 200, 100), 3);
	assert_int_equal(pacer_sendable(s, 200, 100), 3); /* read-only: asking twice is the same */
	/* a 429 with Retry-After blocks b: only a's work counts */
	pacer_on_result(s, b, PACER_THROTTLED, 10000, 200);
	assert_int_equal(pacer_sendable(s, 1000, 100), 10);
	pacer_free(s);
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
	return x < y ? -1 : x > y;
}

static void test_drain_returns_everything(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(5, 100, 10, 1000);
	size_t t0 = add_tenant(s, "a", 0), t1 = add_tenant(s, "b", 0);
	push_n(s, t0, 0, 40, 0);
	push_n(s, t1, 40, 30, 0);
	for (size_t i = 0; i < 30; i++)
		assert_true(pacer_requeue(s, i % 2 ? t0 : t1, JOB(70 + i), 1000 + (int64_t)i, 0));
	pacer_on_result(s, t0, PACER_THROTTLED, 100000, 0);
	assert_int_equal(take(s, 0, NULL, NULL, NULL), PACER_TAKEN); /* from b */
	void *all[128];
	size_t n = 0, k;
	while ((k = pacer_drain(s, all + n, 7)) > 0) {
		assert_true(k <= 7);
		n += k;
	}
	assert_int_equal(n, 99);
	qsort(all, n, sizeof(all[0]), cmp_ptr);
	for (size_t i = 1; i < n; i++)
		assert_true(all[i] != all[i - 1]);
	assert_int_equal(pacer_queued_total(s), 0);
	assert_int_equal(stats_of(s, t0).queued, 0);
	assert_int_equal(stats_of(s, t1).queued, 0);
	void *job;
	size_t t;
	int64_t wake;
	assert_int_equal(pacer_take(s, 200000, &job, &t, &wake), PACER_EMPTY);
	/* usable again after a drain */
	push_n(s, t1, 500, 1, 200000);
	assert_int_equal(take(s, 200000, NULL, NULL, NULL), PACER_TAKEN);
	pacer_free(s);
}

static void test_reload_limits(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 2, 1000);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 10);
	push_n(s, a, 0, 100, 0);
	while (take(s, 0, NULL, NULL, NULL) == PACER_TAKEN)
		;
	pacer_on_result(s, a, PACER_THROTTLED, 1, 0); /* a at half its limit: 10 */
	assert_int_equal(take(s, 1, NULL, NULL, NULL),
	                 PACER_TAKEN); /* the probe at the block's end */
	struct pacer_limits lim = {40, 200, 2, 0};
	assert_true(pacer_set_limits(s, &lim));
	assert_true(stats_of(s, a).configured_limit == 40);
	assert_true(stats_of(s, a).current_rate == 20);     /* keeps its AIMD share */
	assert_true(stats_of(s, b).configured_limit == 10); /* explicit limit stays */
	/* from 0 tokens at 1 ms, 20 per 2 s: a token every 100 ms */
	int64_t wake;
	assert_int_equal(take(s, 50, NULL, NULL, &wake), PACER_WAIT);
	assert_int_equal(wake, 101);
	assert_true(pacer_set_tenant_limit(s, b, 0)); /* back to the default */
	assert_true(stats_of(s, b).configured_limit == 40);
	assert_true(pacer_set_tenant_limit(s, a, 4));
	assert_true(stats_of(s, a).current_rate == 2);
	assert_false(pacer_set_tenant_limit(s, 5, 4));
	assert_false(pacer_set_tenant_limit(s, a, NAN));
	struct pacer_limits bad = {40, 0, 2, 0};
	assert_false(pacer_set_limits(s, &bad));
	/* a shorter window means a faster rate */
	struct pacer_limits fast = {40, 200, 0.2, 0};
	assert_true(pacer_set_limits(s, &fast));
	/* a had 0.49 tokens at 50 ms; now 2 per 200 ms: the next whole token at 101 ms */
	assert_int_equal(take(s, 99, NULL, NULL, &wake), PACER_WAIT);
	assert_true(wake >= 100 && wake <= 102);
	pacer_free(s);
}

/* ---- threads ---- */

enum { MT_JOBS = 20000, MT_TAKERS = 4, MT_TENANTS = 8 };

struct mt {
	struct pacer *s;
	atomic_int_fast64_t clock;
	atomic_int taken_count[MT_JOBS];
	atomic_size_t done;
	atomic_bool pushing_done;
};

static void *mt_pusher(void *arg)
{
	struct mt *m = arg;
	for (size_t i = 0; i < MT_JOBS; i++) {
		int64_t now = atomic_fetch_add(&m->clock, 1);
		while (!pacer_push(m->s, i % MT_TENANTS, JOB(i), now + (int64_t)(i % 7), now))
			now = atomic_fetch_add(&m->clock, 1);
	}
	atomic_store(&m->pushing_done, true);
	return NULL;
}

static void *mt_taker(void *arg)
{
	struct mt *m = arg;
	while (atomic_load(&m->done) < MT_JOBS) {
		int64_t now = atomic_fetch_add(&m->clock, 1);
		void *job;
		size_t t;
		int64_t wake;
		if (pacer_take(m->s, now, &job, &t, &wake) != PACER_TAKEN)
			continue;
		atomic_fetch_add(&m->taken_count[JOB_ID(job)], 1);
		pacer_on_result(m->s, t, JOB_ID(job) % 97 ? PACER_OK : PACER_THROTTLED, 1, now);
		atomic_fetch_add(&m->done, 1);
	}
	return NULL;
}

static void test_threads_take_each_job_once(void **state)
{
	(void)state;
	static struct mt m;
	memset(&m, 0, sizeof m);
	m.s = new_pacer(1e6, 1e7, 1, 512);
	for (size_t i = 0; i < MT_TENANTS; i++) {
		char name[16];
		snprintf(name, sizeof name, "t%zu", i);
		add_tenant(m.s, name, 0);
	}
	pthread_t pusher, takers[MT_TAKERS];
	assert_int_equal(pthread_create(&pusher, NULL, mt_pusher, &m), 0);
	for (int i = 0; i < MT_TAKERS; i++)
		assert_int_equal(pthread_create(&takers[i], NULL, mt_taker, &m), 0);
	pthread_join(pusher, NULL);
	for (int i = 0; i < MT_TAKERS; i++)
		pthread_join(takers[i], NULL);
	for (size_t i = 0; i < MT_JOBS; i++)
		assert_int_equal(atomic_load(&m.taken_count[i]), 1);
	assert_int_equal(pacer_queued_total(m.s), 0);
	pacer_free(m.s);
}

/* ---- a simulated Graph: per-tenant token bucket, latency, Retry-After, a virtual clock ---- */

enum ra_mode { RA_EXACT_MS, RA_WHOLE_SECONDS, RA_ABSENT };

enum { SIM_MAX_REQS = 1024 };

/* Bounds for the half-limit simulation (see docs/scheduling.md for the measured figures). */
#define SIM_HALF_MAX_429_PCT 10
#define SIM_HALF_MIN_GOODPUT 0.9

struct sim_req {
	size_t id;
	int64_t arrive, respond; /* at the server; back at the client */
	bool arrived, throttled;
	int64_t retry_after;
};

struct sim {
	struct pacer *s;
	size_t tenant;
	int64_t now;
	/* server: limit per window, changing to limit_after at change_at */
	double window_ms, limit, limit_after;
	int64_t change_at;
	enum ra_mode ra;
	double tokens;
	int64_t last_refill, advertised_until;
	size_t arrivals, spurious_at; /* the spurious_at-th arrival gets a 429 regardless */
	/* network */
	int64_t latency, jitter;
	uint64_t rng;
	struct sim_req reqs[SIM_MAX_REQS];
	size_t n_reqs;
	/* the client's own record of the Retry-After windows it was told about */
	int64_t client_block;
	/* figures */
	size_t remaining, sent, ok, throttled, client_violations, server_in_window;
	int64_t last_ok;
	size_t ok_after_settle;
	int64_t settle_at;
};

static int64_t sim_latency(struct sim *m)
{
	m->rng = m->rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return m->latency + (int64_t)((m->rng >> 33) % (uint64_t)(m->jitter + 1));
}

static double sim_rate(const struct sim *m, int64_t t)
{
	return (t < m->change_at ? m->limit : m->limit_after) / m->window_ms;
}

static void sim_refill(struct sim *m, int64_t t)
{
	if (m->last_refill < m->change_at && t > m->change_at) {
		m->tokens += (double)(m->change_at - m->last_refill) * sim_rate(m, m->last_refill);
		m->last_refill = m->change_at;
	}
	m->tokens += (double)(t - m->last_refill) * sim_rate(m, t);
	double cap = t < m->change_at ? m->limit : m->limit_after;
	if (m->tokens > cap)
		m->tokens = cap;
	m->last_refill = t;
}

/* The server's decision when a request arrives. */
static void sim_arrive(struct sim *m, struct sim_req *r)
{
	r->arrived = true;
	sim_refill(m, r->arrive);
	if (r->arrive < m->advertised_until)
		m->server_in_window++;
	if (++m->arrivals != m->spurious_at && m->tokens >= 1.0) {
		m->tokens -= 1.0;
		return;
	}
	r->throttled = true;
	double missing = m->tokens >= 1.0 ? 0.5 : 1.0 - m->tokens; /* a spurious one: 0.5 */
	int64_t need = (int64_t)ceil(missing / sim_rate(m, r->arrive));
	if (m->ra == RA_EXACT_MS)
		r->retry_after = need;
	else if (m->ra == RA_WHOLE_SECONDS)
		r->retry_after = (need + 999) / 1000 * 1000;
	if (r->retry_after > 0 && r->arrive + r->retry_after > m->advertised_until)
		m->advertised_until = r->arrive + r->retry_after;
}

static void sim_respond(struct sim *m, size_t i)
{
	struct sim_req r = m->reqs[i];
	m->reqs[i] = m->reqs[--m->n_reqs];
	if (r.throttled) {
		m->throttled++;
		pacer_on_result(m->s, m->tenant, PACER_THROTTLED, r.retry_after, m->now);
		if (m->now + r.retry_after > m->client_block)
			m->client_block = m->now + r.retry_after;
		assert_true(pacer_requeue(m->s, m->tenant, JOB(r.id), m->now, m->now));
		return;
	}
	m->ok++;
	m->remaining--;
	m->last_ok = m->now;
	if (m->now >= m->settle_at)
		m->ok_after_settle++;
	pacer_on_result(m->s, m->tenant, PACER_OK, 0, m->now);
}

/* Handles every arrival and response due by now, in time order (arrivals first on ties). */
static void sim_deliver(struct sim *m)
{
	for (;;) {
		size_t best = SIZE_MAX;
		int64_t best_t = INT64_MAX;
		for (size_t i = 0; i < m->n_reqs; i++) {
			int64_t t = m->reqs[i].arrived ? m->reqs[i].respond : m->reqs[i].arrive;
			bool earlier = t < best_t || (t == best_t && !m->reqs[i].arrived);
			if (t <= m->now && earlier) {
				best = i;
				best_t = t;
			}
		}
		if (best == SIZE_MAX)
			return;
		if (!m->reqs[best].arrived)
			sim_arrive(m, &m->reqs[best]);
		else
			sim_respond(m, best);
	}
}

static void sim_send(struct sim *m, size_t id)
{
	assert_true(m->n_reqs < SIM_MAX_REQS);
	if (m->now < m->client_block)
		m->client_violations++;
	m->sent++;
	struct sim_req *r = &m->reqs[m->n_reqs++];
	*r = (struct sim_req){.id = id, .arrive = m->now + sim_latency(m)};
	r->respond = r->arrive + sim_latency(m);
}

static void sim_run(struct sim *m, int64_t deadline)
{
	while (m->remaining > 0 && m->now <= deadline) {
		sim_deliver(m);
		size_t id;
		int64_t wake = INT64_MAX;
		while (take(m->s, m->now, &id, NULL, &wake) == PACER_TAKEN)
			sim_send(m, id);
		for (size_t i = 0; i < m->n_reqs; i++) {
			int64_t t = m->reqs[i].arrived ? m->reqs[i].respond : m->reqs[i].arrive;
			wake = t < wake ? t : wake;
		}
		assert_true(wake > m->now);
		m->now = wake;
	}
}

/* One tenant configured at `configured` per window; a backlog of `jobs`. */
static void sim_init(struct sim *m, double configured, double server, double window_s, size_t jobs,
                     enum ra_mode ra)
{
	memset(m, 0, sizeof(*m));
	m->s = new_pacer(configured, configured * 10, window_s, jobs + 16);
	m->tenant = add_tenant(m->s, "sim", 0);
	m->window_ms = window_s * 1000;
	m->limit = m->limit_after = server;
	m->tokens = server;
	m->change_at = INT64_MAX;
	m->ra = ra;
	m->latency = 20;
	m->jitter = 15;
	m->rng = 12345;
	m->remaining = jobs;
	m->settle_at = INT64_MAX;
	m->advertised_until = m->client_block = INT64_MIN;
	push_n(m->s, m->tenant, 0, jobs, 0);
}

static void sim_report(const struct sim *m, const char *name, double limit_per_s)
{
	double goodput = (double)m->ok / ((double)m->last_ok / 1000.0);
	print_message("%s: %zu ok in %.1f s: goodput %.2f/s = %.1f%% of %.1f/s; 429s %zu of %zu "
	              "requests (%.1f%%); sent inside a known Retry-After %zu; arrived inside an "
	              "advertised one %zu\n",
	              name, m->ok, (double)m->last_ok / 1000.0, goodput,
	              100.0 * goodput / limit_per_s, limit_per_s, m->throttled, m->sent,
	              100.0 * (double)m->throttled / (double)m->sent, m->client_violations,
	              m->server_in_window);
}

static void test_sim_server_limit_equals_configured(void **state)
{
	(void)state;
	static struct sim m;
	const enum ra_mode modes[] = {RA_EXACT_MS, RA_WHOLE_SECONDS, RA_ABSENT};
	for (size_t i = 0; i < 3; i++) {
		sim_init(&m, 20, 20, 2, 300, modes[i]); /* 20 per 2 s, as in the test */
		sim_run(&m, 120000);
		sim_report(&m, "equal limits", 10);
		assert_int_equal(m.ok, 300);
		assert_true((double)m.ok / ((double)m.last_ok / 1000.0) >= 0.95 * 10);
		assert_true(m.throttled * 100 <= 5 * m.sent);
		assert_int_equal(m.client_violations, 0);
		pacer_free(m.s);
	}
	/* the benchmark's shape: 600 events, at most 2 429s per 100 chats */
	sim_init(&m, 20, 20, 2, 600, RA_EXACT_MS);
	sim_run(&m, 240000);
	sim_report(&m, "equal limits, 600", 10);
	assert_true(m.throttled * 100 <= 2 * m.ok);
	pacer_free(m.s);
	/* one spurious 429 (a clock step, another client of the tenant): quick recovery */
	sim_init(&m, 20, 20, 2, 300, RA_WHOLE_SECONDS);
	m.spurious_at = 100;
	sim_run(&m, 120000);
	sim_report(&m, "equal limits, one spurious 429", 10);
	assert_true((double)m.ok / ((double)m.last_ok / 1000.0) >= 0.95 * 10);
	assert_true(m.throttled * 100 <= 2 * m.ok);
	assert_int_equal(m.client_violations, 0);
	pacer_free(m.s);
}

static void test_sim_server_limit_half(void **state)
{
	(void)state;
	static struct sim m;
	const enum ra_mode modes[] = {RA_EXACT_MS, RA_WHOLE_SECONDS, RA_ABSENT};
	const char *names[] = {"half limit, Retry-After ms", "half limit, Retry-After s",
	                       "half limit, no Retry-After"};
	for (size_t i = 0; i < 3; i++) {
		sim_init(&m, 20, 10, 2, 300, modes[i]);
		sim_run(&m, 300000);
		sim_report(&m, names[i], 5);
		assert_int_equal(m.ok, 300);
		assert_int_equal(m.client_violations, 0);
		/* bounded: the first burst, then about one 429 per AIMD cycle */
		assert_true(m.throttled * 100 <= SIM_HALF_MAX_429_PCT * m.sent);
		assert_true((double)m.ok / ((double)m.last_ok / 1000.0) >=
		            SIM_HALF_MIN_GOODPUT * 5);
		pacer_free(m.s);
	}
}

static void test_sim_recovers_when_server_limit_returns(void **state)
{
	(void)state;
	static struct sim m;
	sim_init(&m, 20, 10, 2, 500, RA_EXACT_MS);
	m.limit_after = 20;
	m.change_at = 10000;
	m.settle_at = 14000; /* two windows after the server's limit came back */
	sim_run(&m, 300000);
	double after = (double)m.ok_after_settle / ((double)(m.last_ok - m.settle_at) / 1000.0);
	sim_report(&m, "half for 10 s, then full", 10);
	print_message("after recovery: %.2f/s = %.1f%% of 10/s\n", after, after * 10);
	assert_int_equal(m.ok, 500);
	assert_int_equal(m.client_violations, 0);
	assert_true(after >= 0.95 * 10);
	pacer_free(m.s);
}

/* ---- ETA ---- */

/* Drives a fresh scheduler until every pushed job left; returns when the last one left (s). */
static double drain_time(struct pacer *s, int64_t start)
{
	int64_t now = start, last = start;
	for (;;) {
		void *job;
		size_t tenant;
		int64_t wake = 0;
		enum pacer_take_status st = pacer_take(s, now, &job, &tenant, &wake);
		if (st == PACER_EMPTY)
			return (double)(last - start) / 1000.0;
		if (st == PACER_TAKEN) {
			pacer_on_result(s, tenant, PACER_OK, 0, now);
			last = now;
			continue;
		}
		now = wake > now ? wake : now + 1;
	}
}

struct eta_case {
	size_t n_tenants;
	double limits[8], events[8];
	double global, window;
};

/* pacer_eta's answer for a fresh start is what the scheduler does, within 0.5 % and a token. */
static void check_eta_matches_scheduler(const struct eta_case *c)
{
	struct pacer *s = new_pacer(20, c->global, c->window, 1u << 20);
	struct eta_tenant t[8];
	size_t id = 0;
	int64_t start = 1000000;
	for (size_t i = 0; i < c->n_tenants; i++) {
		char name[24];
		snprintf(name, sizeof name, "t%zu", i);
		size_t idx = add_tenant(s, name, c->limits[i]);
		push_n(s, idx, id, (size_t)c->events[i], start);
		id += (size_t)c->events[i];
		t[i] = (struct eta_tenant){.events = c->events[i],
		                           .rate = c->limits[i],
		                           .tokens = eta_full_bucket(c->limits[i])};
	}
	double eta = -1;
	assert_true(
	    eta_compute(t, c->n_tenants, c->global, eta_full_bucket(c->global), c->window, &eta));
	double measured = drain_time(s, start);
	/* A token interval: the scheduler hands out whole tokens, the model flows. */
	double interval = c->window / c->global;
	for (size_t i = 0; i < c->n_tenants; i++)
		interval = fmax(interval, c->window / c->limits[i]);
	double slack = 0.005 * measured + interval + 0.01;
	if (fabs(eta - measured) > slack) {
		for (size_t i = 0; i < c->n_tenants; i++)
			printf("tenant %zu: %.0f events at %.0f per %.0f s, eta %.3f\n", i,
			       c->events[i], c->limits[i], c->window, t[i].eta_s);
		fail_msg("global %.0f: eta %.3f s, scheduler drained in %.3f s", c->global, eta,
		         measured);
	}
	pacer_free(s);
}

static void test_eta_one_tenant(void **state)
{
	(void)state;
	/* 200 events at 20 per 10 s: 20 at once, 180 more at 2/s. */
	struct eta_tenant t = {.events = 200, .rate = 20, .tokens = 20};
	double eta = 0;
	assert_true(eta_compute(&t, 1, 200, 200, 10, &eta));
	assert_true(fabs(eta - 90) < 1e-6);
	assert_true(fabs(t.eta_s - 90) < 1e-6);
	/* 10,000 chats of one tenant at 20 per 10 s: over 80 minutes (the figure). */
	t = (struct eta_tenant){.events = 10000, .rate = 20, .tokens = 20};
	assert_true(eta_compute(&t, 1, 200, 200, 10, &eta));
	assert_true(eta > 80 * 60 && fabs(eta - 4990) < 1e-6);
	check_eta_matches_scheduler(&(struct eta_case){1, {20}, {200}, 200, 10});
}

static void test_eta_global_limit_binds(void **state)
{
	(void)state;
	/* 30 tenants of 100 at 20 per 10 s each, 200 global: the global bucket decides. */
	struct eta_tenant t[30];
	for (size_t i = 0; i < 30; i++)
		t[i] = (struct eta_tenant){.events = 100, .rate = 20, .tokens = 20};
	double eta = 0;
	assert_true(eta_compute(t, 30, 200, 200, 10, &eta));
	assert_true(fabs(eta - (3000.0 - 200) / 20) < 1e-6);
	check_eta_matches_scheduler(
	    &(struct eta_case){4, {20, 20, 20, 20}, {100, 100, 100, 100}, 50, 10});
}

static void test_eta_shares_like_round_robin(void **state)
{
	(void)state;
	/*
	 * A big tenant shares the global rate with small ones until they are done, then runs at
	 * its own rate: longer than either bound alone (max(1000/20, 1500/40) windows).
	 */
	struct eta_case c = {4, {20, 20, 20, 20}, {1000, 100, 100, 100}, 40, 1};
	struct eta_tenant t[4];
	for (size_t i = 0; i < 4; i++)
		t[i] = (struct eta_tenant){.events = c.events[i], .rate = 20, .tokens = 20};
	double eta = 0;
	assert_true(eta_compute(t, 4, 40, 40, 1, &eta));
	assert_true(eta > 1000.0 / 20 + 1);
	assert_true(t[1].eta_s < eta && t[1].eta_s == t[2].eta_s);
	check_eta_matches_scheduler(&c);
	/* Different limits, the slow tenant keeps its own rate under the fair share. */
	check_eta_matches_scheduler(&(struct eta_case){3, {5, 30, 60}, {50, 300, 600}, 60, 2});
	/* A tenant held below its rate by the global one saves tokens, spent at the end. */
	check_eta_matches_scheduler(&(struct eta_case){2, {20, 10}, {160, 80}, 24, 1});
	check_eta_matches_scheduler(&(struct eta_case){3, {100, 10, 10}, {2000, 50, 50}, 40, 10});
}

/* Random mixes of tenants, limits and work: the model keeps to the scheduler in every one. */
static void test_eta_random_mixes(void **state)
{
	(void)state;
	uint64_t rng = 0x9e3779b97f4a7c15ULL;
	for (int round = 0; round < 40; round++) {
		struct eta_case c = {0};
		rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
		c.n_tenants = 1 + (size_t)(rng >> 33) % 6;
		c.global = 2 + (double)((rng >> 20) % 120);
		c.window = (rng >> 10) % 2 ? 1 : 10;
		for (size_t i = 0; i < c.n_tenants; i++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			c.limits[i] = 1 + (double)((rng >> 33) % 60);
			c.events[i] = (double)((rng >> 13) % 400);
		}
		check_eta_matches_scheduler(&c);
	}
}

static void test_eta_edges(void **state)
{
	(void)state;
	double eta = -1;
	assert_true(eta_compute(NULL, 0, 200, 200, 10, &eta));
	assert_true(eta == 0);
	struct eta_tenant t[2] = {{.events = 0, .rate = 20, .tokens = 20},
	                          {.events = 5, .rate = 20, .tokens = 20}};
	assert_true(eta_compute(t, 2, 200, 200, 10, &eta));
	assert_true(eta == 0 && t[0].eta_s == 0 && t[1].eta_s == 0);
	/* Work that can never leave. */
	t[1] = (struct eta_tenant){.events = 5, .rate = 0, .tokens = 0};
	assert_true(eta_compute(t, 2, 200, 200, 10, &eta));
	assert_true(isinf(eta) && isinf(t[1].eta_s));
	/* Invalid input. */
	t[1].events = -1;
	assert_false(eta_compute(t, 2, 200, 200, 10, &eta));
	t[1].events = NAN;
	assert_false(eta_compute(t, 2, 200, 200, 10, &eta));
	t[1].events = 1;
	assert_false(eta_compute(t, 2, 200, 200, 0, &eta));
}

static void test_backlog_eta_uses_current_rates(void **state)
{
	(void)state;
	struct pacer *s = new_pacer(20, 200, 10, 10000);
	size_t a = add_tenant(s, "a", 0), b = add_tenant(s, "b", 10);
	push_n(s, a, 0, 40, 0);
	push_n(s, b, 100, 10, 0);
	struct eta_tenant t[2];
	double total = 0;
	assert_true(pacer_backlog_eta(s, 0, t, 2, &total));
	assert_true(t[0].events == 40 && fabs(t[0].eta_s - 20) < 1e-6);
	assert_true(t[1].events == 10 && fabs(t[1].eta_s - 10) < 1e-6);
	assert_true(fabs(total - 20) < 1e-6);
	/* 50 more unread: 40 to a, 10 to b, as queued; a's 80 at 2/s. */
	assert_true(pacer_backlog_eta(s, 50, t, 2, &total));
	assert_true(fabs(total - 40) < 1e-6);
	assert_true(fabs(t[0].eta_s - 20) < 1e-6); /* per tenant: what is queued */
	/* A 429 halves a's rate: its ETA doubles. */
	void *job;
	size_t tenant;
	int64_t wake;
	assert_int_equal(pacer_take(s, 0, &job, &tenant, &wake), PACER_TAKEN);
	pacer_on_result(s, tenant, PACER_THROTTLED, 0, 0);
	assert_true(pacer_backlog_eta(s, 0, t, 2, &total));
	assert_true(fabs(t[tenant].eta_s - 2 * (double)t[tenant].events / (tenant == a ? 2 : 1)) <
	            1e-6);
	pacer_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty_and_errors),
	    cmocka_unit_test(test_bucket_burst_then_rate),
	    cmocka_unit_test(test_delayed_jobs_do_not_block_ready),
	    cmocka_unit_test(test_throttle_halves_blocks_and_recovers),
	    cmocka_unit_test(test_slow_start_grows_the_burst_per_success),
	    cmocka_unit_test(test_throttle_without_retry_after),
	    cmocka_unit_test(test_other_failure_with_retry_after_blocks_only),
	    cmocka_unit_test(test_blocked_tenant_does_not_delay_others),
	    cmocka_unit_test(test_the_observer_hears_each_429s_block_only),
	    cmocka_unit_test(test_a_block_from_another_instance_holds_the_tenant),
	    cmocka_unit_test(test_round_robin_when_global_is_the_bottleneck),
	    cmocka_unit_test(test_global_caps_the_sum),
	    cmocka_unit_test(test_max_queued_counts_delayed_jobs_too),
	    cmocka_unit_test(test_sendable_counts_whole_tokens_of_both_buckets),
	    cmocka_unit_test(test_drain_returns_everything),
	    cmocka_unit_test(test_reload_limits),
	    cmocka_unit_test(test_threads_take_each_job_once),
	    cmocka_unit_test(test_sim_server_limit_equals_configured),
	    cmocka_unit_test(test_sim_server_limit_half),
	    cmocka_unit_test(test_sim_recovers_when_server_limit_returns),
	    cmocka_unit_test(test_eta_one_tenant),
	    cmocka_unit_test(test_eta_global_limit_binds),
	    cmocka_unit_test(test_eta_shares_like_round_robin),
	    cmocka_unit_test(test_eta_random_mixes),
	    cmocka_unit_test(test_eta_edges),
	    cmocka_unit_test(test_backlog_eta_uses_current_rates),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
