/* test_offtrack.c - offset tracker: examples, errors, bounds, and a model-based property test. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "offtrack.h"

static struct offtrack *new_tracker(size_t max)
{
	struct offtrack *t = NULL;
	assert_true(offtrack_new(max, &t));
	return t;
}

static int64_t must_commit(struct offtrack *t, int32_t partition)
{
	int64_t next = -1;
	assert_true(offtrack_committable(t, partition, &next));
	return next;
}

static void test_in_order_and_out_of_order(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(100);
	int64_t next;
	assert_false(offtrack_committable(t, 0, &next)); /* unknown partition */
	for (int64_t o = 10; o < 15; o++)
		assert_true(offtrack_begin(t, 0, o));
	assert_int_equal(offtrack_in_flight(t, 0), 5);
	assert_false(offtrack_committable(t, 0, &next));
	assert_true(offtrack_done(t, 0, 12));
	assert_true(offtrack_done(t, 0, 11));
	assert_false(offtrack_committable(t, 0, &next)); /* 10 still in flight */
	assert_true(offtrack_done(t, 0, 10));
	assert_int_equal(must_commit(t, 0), 13);
	assert_false(offtrack_committable(t, 0, &next)); /* reported once */
	assert_true(offtrack_done(t, 0, 14));
	assert_false(offtrack_committable(t, 0, &next));
	assert_true(offtrack_done(t, 0, 13));
	assert_int_equal(must_commit(t, 0), 15);
	assert_int_equal(offtrack_in_flight(t, 0), 0);
	assert_int_equal(offtrack_tracked_total(t), 0);
	offtrack_free(t);
}

static void test_commit_point_stops_at_the_first_unfinished_offset(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(100);
	assert_true(offtrack_begin(t, 3, 3));
	assert_true(offtrack_begin(t, 3, 5));
	assert_true(offtrack_done(t, 3, 3));
	assert_int_equal(must_commit(t, 3), 4);
	assert_true(offtrack_done(t, 3, 5));
	assert_int_equal(must_commit(t, 3), 6);
	/* big gaps with out-of-order completion: the binary-search path */
	const int64_t offs[] = {100, 101, 250, 251, 252, 1000, 5000, 5001};
	for (size_t i = 0; i < 8; i++)
		assert_true(offtrack_begin(t, 3, offs[i]));
	assert_false(offtrack_done(t, 3, 102));  /* in a gap: never begun */
	assert_false(offtrack_done(t, 3, 4));    /* below everything tracked */
	assert_false(offtrack_done(t, 3, 6000)); /* above everything begun */
	assert_true(offtrack_done(t, 3, 5000));
	assert_true(offtrack_done(t, 3, 251));
	assert_true(offtrack_done(t, 3, 100));
	assert_int_equal(must_commit(t, 3), 101);
	assert_true(offtrack_done(t, 3, 101));
	assert_true(offtrack_done(t, 3, 250));
	assert_int_equal(must_commit(t, 3), 252);
	assert_true(offtrack_done(t, 3, 252));
	assert_true(offtrack_done(t, 3, 1000));
	assert_int_equal(must_commit(t, 3), 5001);
	assert_int_equal(offtrack_in_flight(t, 3), 1);
	offtrack_free(t);
}

/* The position is what a hand-over mark writes: it does not depend on what was reported. */
static void test_position_does_not_consume_the_report(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(100);
	int64_t next = -1;
	assert_false(offtrack_position(t, 0, &next)); /* unknown partition */
	assert_true(offtrack_begin(t, 0, 5));
	assert_true(offtrack_begin(t, 0, 6));
	assert_false(offtrack_position(t, 0, &next)); /* nothing done */
	assert_true(offtrack_done(t, 0, 6));
	assert_false(offtrack_position(t, 0, &next)); /* 5 still in flight */
	assert_true(offtrack_done(t, 0, 5));
	assert_true(offtrack_position(t, 0, &next));
	assert_int_equal(next, 7);
	assert_int_equal(must_commit(t, 0), 7);
	assert_true(offtrack_position(t, 0, &next)); /* still 7 after the report */
	assert_int_equal(next, 7);
	offtrack_drop_partition(t, 0);
	assert_false(offtrack_position(t, 0, &next));
	offtrack_free(t);
}

static void test_errors_and_bounds(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(4);
	assert_false(offtrack_begin(t, -1, 0));
	assert_false(offtrack_begin(t, OFFTRACK_MAX_PARTITION + 1, 0));
	assert_false(offtrack_begin(t, 0, -5));
	assert_true(offtrack_begin(t, 0, 7));
	assert_false(offtrack_begin(t, 0, 7)); /* not increasing */
	assert_false(offtrack_begin(t, 0, 6));
	assert_true(offtrack_begin(t, 1, 0)); /* partitions are independent */
	assert_true(offtrack_begin(t, OFFTRACK_MAX_PARTITION, 1));
	assert_true(offtrack_begin(t, 0, 9));
	assert_false(offtrack_begin(t, 2, 0)); /* bound of 4 tracked offsets */
	/* done but behind an in-flight offset still counts against the bound */
	assert_true(offtrack_done(t, 0, 9));
	assert_int_equal(offtrack_tracked_total(t), 4);
	assert_int_equal(offtrack_in_flight_total(t), 3);
	assert_false(offtrack_begin(t, 2, 0));
	assert_false(offtrack_done(t, 0, 9)); /* twice */
	assert_false(offtrack_done(t, 5, 0)); /* unknown partition */
	assert_false(offtrack_done(t, 100000, 0));
	assert_false(offtrack_done(t, -3, 0));
	assert_true(offtrack_done(t, 0, 7));
	assert_int_equal(must_commit(t, 0), 10);
	assert_true(offtrack_begin(t, 2, 0)); /* room again */
	offtrack_free(t);
}

static void test_drop_partition(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(100);
	for (int64_t o = 0; o < 10; o++)
		assert_true(offtrack_begin(t, 1, o));
	assert_true(offtrack_begin(t, 2, 50));
	assert_true(offtrack_done(t, 1, 0));
	offtrack_drop_partition(t, 1);
	offtrack_drop_partition(t, 1);  /* idempotent */
	offtrack_drop_partition(t, 77); /* never seen */
	assert_int_equal(offtrack_in_flight(t, 1), 0);
	assert_int_equal(offtrack_in_flight_total(t), 1);
	assert_int_equal(offtrack_tracked_total(t), 1);
	int64_t next;
	assert_false(offtrack_committable(t, 1, &next));
	assert_false(offtrack_done(t, 1, 5)); /* late acknowledgement after a revoke */
	/* re-assigned: starts over, possibly from a lower offset than before */
	assert_true(offtrack_begin(t, 1, 1));
	assert_true(offtrack_done(t, 1, 1));
	assert_int_equal(must_commit(t, 1), 2);
	offtrack_free(t);
}

/* Model: per partition, every begun offset and whether it is done, in begin order. */
struct model_part {
	int64_t offs[4096];
	bool done[4096];
	size_t n;
	int64_t reported;
};

static int64_t model_commit(const struct model_part *m)
{
	int64_t c = -1;
	for (size_t i = 0; i < m->n && m->done[i]; i++)
		c = m->offs[i] + 1;
	return c;
}

static size_t model_in_flight(const struct model_part *m)
{
	size_t k = 0;
	for (size_t i = 0; i < m->n; i++)
		k += !m->done[i];
	return k;
}

static void property_step(struct offtrack *t, struct model_part *m, int32_t p, unsigned r)
{
	unsigned op = r % 100;
	if (op < 40 && m->n < 4096) {
		int64_t last = m->n ? m->offs[m->n - 1] : -1;
		int64_t o = last + 1 + ((r >> 8) % 4 == 0 ? (int64_t)((r >> 12) % 50) : 0);
		assert_true(offtrack_begin(t, p, o));
		m->offs[m->n] = o;
		m->done[m->n++] = false;
	} else if (op < 85 && m->n) {
		size_t i = (r >> 8) % m->n;
		bool ok = offtrack_done(t, p, m->offs[i]);
		assert_int_equal(ok, !m->done[i]);
		m->done[i] = true;
	} else if (op < 98) {
		int64_t want = model_commit(m), got = -1;
		bool moved = offtrack_committable(t, p, &got);
		assert_int_equal(moved, want > m->reported);
		if (moved) {
			assert_int_equal(got, want);
			m->reported = want;
		}
	} else {
		offtrack_drop_partition(t, p);
		memset(m, 0, sizeof(*m));
		m->reported = -1;
	}
	assert_int_equal(offtrack_in_flight(t, p), model_in_flight(m));
}

static void test_property_random_order(void **state)
{
	(void)state;
	enum { PARTS = 4 };
	static struct model_part model[PARTS];
	for (int round = 0; round < 20; round++) {
		struct offtrack *t = new_tracker(PARTS * 4096);
		for (int p = 0; p < PARTS; p++) {
			memset(&model[p], 0, sizeof(model[p]));
			model[p].reported = -1;
		}
		srand((unsigned)round + 1);
		for (int step = 0; step < 5000; step++) {
			unsigned r = ((unsigned)rand() << 16) ^ (unsigned)rand();
			int32_t p = (int32_t)(r % PARTS);
			property_step(t, &model[p], p, r / PARTS);
		}
		size_t total = 0;
		for (int p = 0; p < PARTS; p++)
			total += model_in_flight(&model[p]);
		assert_int_equal(offtrack_in_flight_total(t), total);
		offtrack_free(t);
	}
}

static double elapsed_ms(const struct timespec *a)
{
	struct timespec b;
	clock_gettime(CLOCK_MONOTONIC, &b);
	return (double)(b.tv_sec - a->tv_sec) * 1e3 + (double)(b.tv_nsec - a->tv_nsec) / 1e6;
}

/* 100,000 in flight, done in random order, dense and with gaps: must take milliseconds. */
static void run_large(int64_t stride)
{
	enum { N = 100000 };
	int64_t *order = malloc(N * sizeof(*order));
	assert_non_null(order);
	struct offtrack *t = new_tracker(N);
	/* stride 1: dense; stride 3: irregular gaps (3i or 3i + 1) */
	for (int64_t i = 0; i < N; i++) {
		order[i] = 1000 + i * stride + (stride > 1 && i % 3 == 0);
		assert_true(offtrack_begin(t, 7, order[i]));
	}
	int64_t last = order[N - 1];
	assert_false(offtrack_begin(t, 7, 1 << 30)); /* bound */
	srand(5);
	for (size_t i = N - 1; i > 0; i--) {
		size_t j = (size_t)rand() % (i + 1);
		int64_t tmp = order[i];
		order[i] = order[j];
		order[j] = tmp;
	}
	struct timespec start;
	clock_gettime(CLOCK_MONOTONIC, &start);
	for (size_t i = 0; i < N; i++)
		assert_true(offtrack_done(t, 7, order[i]));
	double ms = elapsed_ms(&start);
	assert_int_equal(must_commit(t, 7), last + 1);
	assert_int_equal(offtrack_tracked_total(t), 0);
	print_message("100000 random-order done() with stride %lld: %.1f ms\n", (long long)stride,
	              ms);
	assert_true(ms < 2000); /* generous for sanitizers; O(n^2) would take minutes */
	offtrack_free(t);
	free(order);
}

static void test_large_random_order(void **state)
{
	(void)state;
	run_large(1);
	run_large(3);
}

/* A long-lived slow head, with a steady stream behind it: memory stays bounded. */
static void test_stuck_head_then_release(void **state)
{
	(void)state;
	struct offtrack *t = new_tracker(50000);
	assert_true(offtrack_begin(t, 0, 0));
	for (int64_t o = 1; o < 50000; o++) {
		assert_true(offtrack_begin(t, 0, o));
		assert_true(offtrack_done(t, 0, o));
	}
	int64_t next;
	assert_false(offtrack_committable(t, 0, &next));
	assert_false(offtrack_begin(t, 0, 50000)); /* full: the caller pauses */
	assert_true(offtrack_done(t, 0, 0));
	assert_int_equal(must_commit(t, 0), 50000);
	/* the big ring shrinks back as the stream continues */
	for (int64_t o = 50000; o < 60000; o++) {
		assert_true(offtrack_begin(t, 0, o));
		assert_true(offtrack_done(t, 0, o));
	}
	assert_int_equal(must_commit(t, 0), 60000);
	offtrack_free(t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_in_order_and_out_of_order),
	    cmocka_unit_test(test_commit_point_stops_at_the_first_unfinished_offset),
	    cmocka_unit_test(test_position_does_not_consume_the_report),
	    cmocka_unit_test(test_errors_and_bounds),
	    cmocka_unit_test(test_drop_partition),
	    cmocka_unit_test(test_property_random_order),
	    cmocka_unit_test(test_large_random_order),
	    cmocka_unit_test(test_stuck_head_then_release),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
