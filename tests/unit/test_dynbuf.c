/*
 * test_dynbuf.c - the bounded buffer: its limit holds to the byte, a failure sticks until a
 * reset, printf output goes through the same limit, a fixed view never writes past the
 * caller's array, and the wiping calls zero what held a secret.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "dynbuf.h"

static bool all_zero(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

static void test_fresh_buffer_reads_as_empty_string(void **state)
{
	(void)state;
	struct dynbuf b;
	dynbuf_init(&b, 16);
	assert_string_equal(dynbuf_str(&b), "");
	assert_int_equal(dynbuf_len(&b), 0);
	assert_true(dynbuf_ok(&b));
	dynbuf_free(&b);
}

static void test_limit_is_exact_and_failure_sticks_until_reset(void **state)
{
	(void)state;
	struct dynbuf b;
	dynbuf_init(&b, 5000); /* past the first block, so growth is clamped at the limit */
	for (size_t i = 0; i < 5000; i++)
		assert_true(dynbuf_add(&b, "x", 1));
	assert_int_equal(dynbuf_len(&b), 5000);
	assert_true(b.cap <= 5001);
	assert_false(dynbuf_add(&b, "y", 1));
	assert_true(dynbuf_too_big(&b));
	assert_false(dynbuf_ok(&b));
	assert_int_equal(dynbuf_len(&b), 5000);
	assert_int_equal(strlen(dynbuf_str(&b)), 5000);
	/* Sticky: even an append that would fit now does nothing. */
	assert_false(dynbuf_add(&b, "", 0));
	dynbuf_reset(&b);
	assert_true(dynbuf_ok(&b));
	assert_false(dynbuf_too_big(&b));
	assert_true(dynbuf_adds(&b, "again"));
	assert_string_equal(dynbuf_str(&b), "again");
	dynbuf_free(&b);
}

static void test_one_append_over_the_limit_adds_nothing(void **state)
{
	(void)state;
	struct dynbuf b;
	dynbuf_init(&b, 4);
	assert_true(dynbuf_adds(&b, "ab"));
	assert_false(dynbuf_adds(&b, "cde"));
	assert_string_equal(dynbuf_str(&b), "ab");
	dynbuf_free(&b);
}

static void test_printf_appends_within_the_limit(void **state)
{
	(void)state;
	struct dynbuf b;
	char longer[600];
	memset(longer, 'z', sizeof longer - 1);
	longer[sizeof longer - 1] = '\0';
	dynbuf_init(&b, 1000);
	assert_true(dynbuf_addf(&b, "%s=%d;", "n", 42));
	assert_true(dynbuf_addf(&b, "%s", longer)); /* longer than addf's stack buffer */
	assert_int_equal(dynbuf_len(&b), 5 + 599);
	assert_memory_equal(dynbuf_str(&b), "n=42;zzz", 8);
	assert_false(dynbuf_addf(&b, "%s", longer)); /* 1203 > 1000 */
	assert_true(dynbuf_too_big(&b));
	assert_int_equal(dynbuf_len(&b), 604);
	dynbuf_free(&b);
}

static void test_fixed_view_stays_inside_the_array(void **state)
{
	(void)state;
	char out[9];
	memset(out, '#', sizeof out);
	struct dynbuf b;
	dynbuf_init_fixed(&b, out, 8);
	assert_string_equal(out, "");
	assert_true(dynbuf_adds(&b, "1234567"));
	assert_false(dynbuf_adds(&b, "8"));
	assert_true(dynbuf_too_big(&b));
	assert_string_equal(out, "1234567");
	assert_int_equal(out[8], '#');
	assert_null(dynbuf_take(&b, &(size_t){0}));

	struct dynbuf none;
	dynbuf_init_fixed(&none, out, 0);
	assert_false(dynbuf_ok(&none));
	assert_false(dynbuf_adds(&none, ""));
}

static void test_take_hands_over_the_text(void **state)
{
	(void)state;
	struct dynbuf b;
	size_t len = 99;
	dynbuf_init(&b, 64);
	char *empty = dynbuf_take(&b, &len);
	assert_non_null(empty);
	assert_string_equal(empty, "");
	assert_int_equal(len, 0);
	free(empty);
	assert_true(dynbuf_adds(&b, "metrics"));
	char *text = dynbuf_take(&b, &len);
	assert_string_equal(text, "metrics");
	assert_int_equal(len, 7);
	assert_int_equal(dynbuf_len(&b), 0);
	free(text);
	assert_false(dynbuf_adds(
	    &b, "far more than sixty-four bytes of text, which the limit of this buffer refuses"));
	assert_null(dynbuf_take(&b, &len));
	dynbuf_free(&b);
}

static void test_secret_growth_keeps_the_text(void **state)
{
	(void)state;
	struct dynbuf b;
	dynbuf_init_secret(&b, 10000);
	for (int i = 0; i < 1000; i++)
		assert_true(dynbuf_addf(&b, "%09d;", i));
	assert_int_equal(dynbuf_len(&b), 10000);
	assert_memory_equal(dynbuf_str(&b) + 9990, "000000999;", 10);
	dynbuf_wipe(&b);
	assert_int_equal(dynbuf_len(&b), 0);
	assert_string_equal(dynbuf_str(&b), "");
}

/* The wipe zeroes every byte of the block, not only the text: the same cleanse runs on a
 * heap block before it is freed. */
static void test_wipe_zeroes_the_whole_block(void **state)
{
	(void)state;
	char out[32];
	memset(out, 'S', sizeof out);
	struct dynbuf b;
	dynbuf_init_fixed(&b, out, sizeof out);
	assert_true(dynbuf_adds(&b, "client_secret=hunter2"));
	dynbuf_wipe(&b);
	assert_true(all_zero(out, sizeof out));
	assert_int_equal(dynbuf_len(&b), 0);
	assert_true(dynbuf_ok(&b));
}

static void test_secret_reset_and_truncate_zero_what_they_drop(void **state)
{
	(void)state;
	struct dynbuf b;
	dynbuf_init_secret(&b, 100);
	assert_true(dynbuf_adds(&b, "token-abcdef\n\n"));
	dynbuf_truncate(&b, 12);
	assert_string_equal(dynbuf_str(&b), "token-abcdef");
	assert_true(all_zero(b.p + 12, 2));
	dynbuf_truncate(&b, 50); /* longer: nothing to cut */
	assert_int_equal(dynbuf_len(&b), 12);
	dynbuf_reset(&b);
	assert_non_null(b.p);
	assert_true(all_zero(b.p, b.cap));
	dynbuf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fresh_buffer_reads_as_empty_string),
	    cmocka_unit_test(test_limit_is_exact_and_failure_sticks_until_reset),
	    cmocka_unit_test(test_one_append_over_the_limit_adds_nothing),
	    cmocka_unit_test(test_printf_appends_within_the_limit),
	    cmocka_unit_test(test_fixed_view_stays_inside_the_array),
	    cmocka_unit_test(test_take_hands_over_the_text),
	    cmocka_unit_test(test_secret_growth_keeps_the_text),
	    cmocka_unit_test(test_wipe_zeroes_the_whole_block),
	    cmocka_unit_test(test_secret_reset_and_truncate_zero_what_they_drop),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
