/* test_retry.c - classification table, backoff bounds and distribution, retry limits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <curl/curl.h>

#include "retry.h"

static void test_classify_table(void **state)
{
	(void)state;
	static const struct {
		long status;
		int curl;
		enum retry_class want;
	} cases[] = {
	    {200, CURLE_OK, RETRY_SUCCESS},
	    {201, CURLE_OK, RETRY_SUCCESS},
	    {202, CURLE_OK, RETRY_SUCCESS},
	    {204, CURLE_OK, RETRY_SUCCESS},
	    {299, CURLE_OK, RETRY_SUCCESS},
	    {429, CURLE_OK, RETRY_THROTTLED},
	    {401, CURLE_OK, RETRY_AUTH},
	    {408, CURLE_OK, RETRY_TRANSIENT},
	    {500, CURLE_OK, RETRY_TRANSIENT},
	    {502, CURLE_OK, RETRY_TRANSIENT},
	    {503, CURLE_OK, RETRY_TRANSIENT},
	    {504, CURLE_OK, RETRY_TRANSIENT},
	    {0, CURLE_OK, RETRY_TRANSIENT},
	    {400, CURLE_OK, RETRY_PERMANENT},
	    {403, CURLE_OK, RETRY_PERMANENT},
	    {404, CURLE_OK, RETRY_PERMANENT},
	    {409, CURLE_OK, RETRY_PERMANENT},
	    {413, CURLE_OK, RETRY_PERMANENT},
	    {501, CURLE_OK, RETRY_PERMANENT},
	    {505, CURLE_OK, RETRY_PERMANENT},
	    {301, CURLE_OK, RETRY_PERMANENT},
	    {100, CURLE_OK, RETRY_PERMANENT},
	    {0, CURLE_COULDNT_CONNECT, RETRY_TRANSIENT},
	    {0, CURLE_OPERATION_TIMEDOUT, RETRY_TRANSIENT},
	    {0, CURLE_RECV_ERROR, RETRY_TRANSIENT},
	    {0, CURLE_SEND_ERROR, RETRY_TRANSIENT},
	    {0, CURLE_GOT_NOTHING, RETRY_TRANSIENT},
	    {0, CURLE_COULDNT_RESOLVE_HOST, RETRY_TRANSIENT},
	    {0, CURLE_SSL_CONNECT_ERROR, RETRY_TRANSIENT},
	    {0, CURLE_HTTP2_STREAM, RETRY_TRANSIENT},
	    /* a POST body that cannot be rewound for libcurl's own resend (worker.c): the
	     * outcome is unknown, never a permanent refusal */
	    {0, CURLE_SEND_FAIL_REWIND, RETRY_TRANSIENT},
	    {0, CURLE_HTTP2, RETRY_TRANSIENT},
	    /* a status seen before the transfer broke does not make it a success */
	    {200, CURLE_PARTIAL_FILE, RETRY_TRANSIENT},
	    {0, CURLE_URL_MALFORMAT, RETRY_PERMANENT},
	    {0, CURLE_UNSUPPORTED_PROTOCOL, RETRY_PERMANENT},
	    {0, CURLE_BAD_FUNCTION_ARGUMENT, RETRY_PERMANENT},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		enum retry_class got = retry_classify(cases[i].status, cases[i].curl);
		if (got != cases[i].want)
			fail_msg("status %ld curl %d: got %s want %s", cases[i].status,
			         cases[i].curl, retry_class_name(got),
			         retry_class_name(cases[i].want));
	}
	assert_string_equal(retry_class_name(RETRY_THROTTLED), "throttled");
}

static void test_backoff_bounds_and_mean(void **state)
{
	(void)state;
	struct retry_policy p = {.max_attempts = 10,
	                         .base_delay_ms = 100,
	                         .max_delay_ms = 5000,
	                         .max_elapsed_ms = 60000};
	uint64_t rng = 42;
	const int64_t caps[] = {100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000};
	for (unsigned attempt = 1; attempt <= 9; attempt++) {
		int64_t cap = caps[attempt - 1], lo = INT64_MAX, hi = -1;
		double sum = 0;
		const int n = 20000;
		for (int i = 0; i < n; i++) {
			int64_t d = retry_backoff_ms(&p, attempt, &rng);
			assert_true(d >= 0 && d <= cap);
			lo = d < lo ? d : lo;
			hi = d > hi ? d : hi;
			sum += (double)d;
		}
		double mean = sum / n;
		/* full jitter: mean is cap/2; the extremes are reached */
		if (mean < cap * 0.47 || mean > cap * 0.53)
			fail_msg("attempt %u: mean %.1f, cap %lld", attempt, mean, (long long)cap);
		assert_true(lo <= cap / 50);
		assert_true(hi >= cap - cap / 50);
	}
}

static void test_backoff_edges(void **state)
{
	(void)state;
	uint64_t rng = 7;
	struct retry_policy p = {.max_attempts = 3, .base_delay_ms = 1000, .max_delay_ms = 30000};
	/* huge attempt numbers neither overflow nor exceed the cap */
	for (unsigned a = 60; a < 70; a++)
		assert_true(retry_backoff_ms(&p, a, &rng) <= 30000);
	assert_true(retry_backoff_ms(&p, 4000000000u, &rng) <= 30000);
	/* attempt 0 behaves like attempt 1 */
	for (int i = 0; i < 100; i++)
		assert_true(retry_backoff_ms(&p, 0, &rng) <= 1000);
	/* zero caps give zero delay */
	struct retry_policy z = {.max_attempts = 3, .base_delay_ms = 0, .max_delay_ms = 0};
	assert_int_equal(retry_backoff_ms(&z, 5, &rng), 0);
	/* a max below base caps the first delay too */
	struct retry_policy m = {.max_attempts = 3, .base_delay_ms = 1000, .max_delay_ms = 10};
	for (int i = 0; i < 100; i++)
		assert_true(retry_backoff_ms(&m, 1, &rng) <= 10);
	/* same seed, same sequence: the caller owns the state */
	uint64_t a = 99, b = 99;
	for (int i = 0; i < 10; i++)
		assert_int_equal(retry_backoff_ms(&p, 3, &a), retry_backoff_ms(&p, 3, &b));
}

static void test_next_delay_honours_retry_after(void **state)
{
	(void)state;
	uint64_t rng = 1;
	struct retry_policy p = {.max_attempts = 5, .base_delay_ms = 100, .max_delay_ms = 200};
	for (int i = 0; i < 100; i++) {
		assert_true(retry_next_delay_ms(&p, 1, 2128, &rng) == 2128);
		int64_t d = retry_next_delay_ms(&p, 2, 50, &rng);
		assert_true(d >= 50 && d <= 200);
		d = retry_next_delay_ms(&p, 2, 0, &rng);
		assert_true(d >= 0 && d <= 200);
	}
}

static void test_may_retry_limits(void **state)
{
	(void)state;
	struct retry_policy p = {
	    .max_attempts = 3, .base_delay_ms = 100, .max_delay_ms = 1000, .max_elapsed_ms = 10000};
	assert_true(retry_may_retry(&p, 1, 0, 0, 100));
	assert_true(retry_may_retry(&p, 2, 0, 0, 100));
	assert_false(retry_may_retry(&p, 3, 0, 0, 100));
	assert_false(retry_may_retry(&p, 4, 0, 0, 0));
	/* elapsed: the next attempt's start counts, inclusive bound */
	assert_true(retry_may_retry(&p, 1, 1000, 10000, 1000));
	assert_false(retry_may_retry(&p, 1, 1000, 10000, 1001));
	assert_false(retry_may_retry(&p, 1, 1000, 11001, 0));
	/* no elapsed limit */
	struct retry_policy u = {.max_attempts = 2, .max_elapsed_ms = 0};
	assert_true(retry_may_retry(&u, 1, 0, INT64_MAX / 4, 1000000));
	assert_false(retry_may_retry(&u, 2, 0, 0, 0));
	/* max_attempts 0 means a single attempt */
	struct retry_policy one = {.max_attempts = 0};
	assert_false(retry_may_retry(&one, 1, 0, 0, 0));
}

static void test_refusal_classification(void **state)
{
	(void)state;
	/* Only these two refusals of POST /chats are treated apart; every other one is final. */
	assert_int_equal(retry_classify_refusal(404), RETRY_REFUSAL_NOT_FOUND);
	assert_int_equal(retry_classify_refusal(403), RETRY_REFUSAL_FORBIDDEN);
	static const long final[] = {400, 401, 405, 409, 410, 413, 415, 422, 0, 500, 501};
	for (size_t i = 0; i < sizeof(final) / sizeof(final[0]); i++)
		if (retry_classify_refusal(final[i]) != RETRY_REFUSAL_FINAL)
			fail_msg("status %ld is not a final refusal", final[i]);
	/* ... and retry_classify still calls both permanent (the poll and lookup paths rely on it) */
	assert_int_equal(retry_classify(404, CURLE_OK), RETRY_PERMANENT);
	assert_int_equal(retry_classify(403, CURLE_OK), RETRY_PERMANENT);
}

/* The waits double from the base up to the cap, each jittered down by at most a quarter. */
static void test_not_found_waits_double_to_the_cap(void **state)
{
	(void)state;
	struct retry_not_found_policy p = {
	    .budget_ms = 600000, .base_delay_ms = 2000, .max_delay_ms = 60000};
	uint64_t rng = 7;
	static const int64_t caps[] = {2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000};
	for (int round = 0; round < 1000; round++) {
		for (unsigned n = 1; n <= 8; n++) {
			int64_t d = retry_not_found_delay_ms(&p, n, 0, 0, &rng);
			int64_t cap = caps[n - 1];
			if (d > cap || d < cap - cap / 4)
				fail_msg("404 #%u: wait %lld outside [%lld, %lld]", n, (long long)d,
				         (long long)(cap - cap / 4), (long long)cap);
		}
	}
	/* 0 is taken as the first */
	int64_t d0 = retry_not_found_delay_ms(&p, 0, 0, 0, &rng);
	assert_true(d0 <= 2000 && d0 >= 1500);
}

/* The budget counts from the first 404: the last try lands on its end, then it fails. */
static void test_not_found_budget(void **state)
{
	(void)state;
	struct retry_not_found_policy p = {
	    .budget_ms = 10000, .base_delay_ms = 2000, .max_delay_ms = 60000};
	uint64_t rng = 1;
	/* 9 s after the first 404: at most 1 s left, so the next try is at the budget's end */
	int64_t d = retry_not_found_delay_ms(&p, 4, 100000, 109000, &rng);
	assert_true(d > 0 && d <= 1000);
	/* at or past the end: fail */
	assert_int_equal(retry_not_found_delay_ms(&p, 5, 100000, 110000, &rng), -1);
	assert_int_equal(retry_not_found_delay_ms(&p, 5, 100000, 250000, &rng), -1);
	/* 0: fail at the first 404 */
	struct retry_not_found_policy none = {.budget_ms = 0, .base_delay_ms = 2000,
	                                      .max_delay_ms = 60000};
	assert_int_equal(retry_not_found_delay_ms(&none, 1, 5000, 5000, &rng), -1);
	/* a whole run: the tries spread over the budget and the last one is at its end */
	int64_t now = 0, first = 0;
	unsigned count = 0;
	int64_t delay;
	while ((delay = retry_not_found_delay_ms(&p, ++count, first, now, &rng)) >= 0)
		now += delay;
	assert_int_equal(now, 10000);
	assert_true(count >= 4 && count <= 6);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_classify_table),
	    cmocka_unit_test(test_backoff_bounds_and_mean),
	    cmocka_unit_test(test_backoff_edges),
	    cmocka_unit_test(test_next_delay_honours_retry_after),
	    cmocka_unit_test(test_may_retry_limits),
	    cmocka_unit_test(test_refusal_classification),
	    cmocka_unit_test(test_not_found_waits_double_to_the_cap),
	    cmocka_unit_test(test_not_found_budget),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
