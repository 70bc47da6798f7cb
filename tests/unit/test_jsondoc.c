/* test_jsondoc.c - strict parsing with a reused tokener: errors, depth, reuse, threads. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "jsondoc.h"

static json_object *parse(const char *text, int depth, struct jsondoc_error *err)
{
	return jsondoc_parse(text, strlen(text), depth, err);
}

static void test_errors_say_where_and_why(void **state)
{
	(void)state;
	struct jsondoc_error err;
	json_object *o = parse(" {\"a\": [1, 2]}\n", 8, &err);
	assert_non_null(o);
	assert_int_equal(err.status, JSONDOC_OK);
	json_object_put(o);
	assert_null(parse("{\"a\": 1", 8, &err));
	assert_int_equal(err.status, JSONDOC_TRUNCATED);
	assert_int_equal(err.offset, 7);
	/* json-c's strict mode refuses what follows the value itself, where it starts. */
	assert_null(parse("{\"a\": 1} x", 8, &err));
	assert_int_equal(err.status, JSONDOC_INVALID);
	assert_int_equal(err.offset, 9);
	assert_null(parse("{\"a\": 1}\n {}", 8, &err));
	assert_int_equal(err.status, JSONDOC_INVALID);
	assert_int_equal(err.offset, 10);
	assert_null(parse("{\"a\": tru}", 8, &err));
	assert_int_equal(err.status, JSONDOC_INVALID);
	assert_non_null(err.what);
	assert_null(parse("{a: 1}", 8, &err)); /* keys are strings */
	assert_int_equal(err.status, JSONDOC_INVALID);
	assert_null(parse("\"\xff\"", 8, &err)); /* invalid UTF-8 */
	assert_int_equal(err.status, JSONDOC_INVALID);
}

/* A tokener left in an error state is reset: the next document parses. */
static void test_reused_after_errors(void **state)
{
	(void)state;
	struct jsondoc_error err;
	for (int i = 0; i < 1000; i++) {
		assert_null(parse(i % 2 ? "[1, 2" : "{\"a\":}", 8, &err));
		json_object *o = parse("{\"n\": 42}", 8, &err);
		assert_non_null(o);
		assert_int_equal(json_object_get_int(json_object_object_get(o, "n")), 42);
		json_object_put(o);
	}
}

static void test_depth_is_per_call(void **state)
{
	(void)state;
	struct jsondoc_error err;
	const char *deep = "[[[[[1]]]]]";
	assert_null(parse(deep, 4, &err));
	assert_int_equal(err.status, JSONDOC_INVALID);
	json_object *o = parse(deep, 8, &err);
	assert_non_null(o);
	json_object_put(o);
	assert_null(parse(deep, 4, &err)); /* a third depth replaces a slot */
	o = parse(deep, 16, &err);
	assert_non_null(o);
	json_object_put(o);
	assert_null(parse(deep, 4, &err));
}

static void *parse_many(void *arg)
{
	int id = *(int *)arg;
	char text[64];
	for (int i = 0; i < 2000; i++) {
		struct jsondoc_error err;
		snprintf(text, sizeof text, "{\"thread\": %d, \"i\": %d}", id, i);
		json_object *o = jsondoc_parse(text, strlen(text), 4, &err);
		if (!o || json_object_get_int(json_object_object_get(o, "i")) != i)
			return (void *)1;
		json_object_put(o);
	}
	return NULL;
}

/* Each thread has its own tokeners (freed when it exits: ASan's leak check). */
static void test_threads_do_not_share(void **state)
{
	(void)state;
	pthread_t t[4];
	int ids[4] = {0, 1, 2, 3};
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, parse_many, &ids[i]), 0);
	for (int i = 0; i < 4; i++) {
		void *rc = (void *)1;
		assert_int_equal(pthread_join(t[i], &rc), 0);
		assert_null(rc);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_errors_say_where_and_why),
	    cmocka_unit_test(test_reused_after_errors),
	    cmocka_unit_test(test_depth_is_per_call),
	    cmocka_unit_test(test_threads_do_not_share),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
