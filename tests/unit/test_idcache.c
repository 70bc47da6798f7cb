/*
 * test_idcache.c - the lookup's cache of object ids: per tenant, UPNs in any case, fresh for
 * its TTL only, bounded with the least recently used going first.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "idcache.h"

#define ID_A "8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca"
#define ID_B "3626a173-f2bc-4883-bcf7-01514c3bfb82"

static void test_per_tenant_any_case(void **state)
{
	(void)state;
	char id[37];
	struct idcache *c;
	assert_true(idcache_new(4, 1000, &c));
	assert_false(idcache_get(c, NULL, "jane@contoso.com", 0, id));
	assert_true(idcache_put(c, NULL, "Jane@Contoso.com", ID_A, 0));
	assert_true(idcache_get(c, NULL, "jane@CONTOSO.com", 10, id));
	assert_string_equal(id, ID_A);
	/* The same UPN in another tenant profile is another user. */
	assert_false(idcache_get(c, "fabrikam", "jane@contoso.com", 10, id));
	assert_true(idcache_put(c, "fabrikam", "jane@contoso.com", ID_B, 10));
	assert_true(idcache_get(c, "fabrikam", "jane@contoso.com", 10, id));
	assert_string_equal(id, ID_B);
	assert_true(idcache_get(c, "", "jane@contoso.com", 10, id));
	assert_string_equal(id, ID_A);
	/* A new answer replaces the old one; nothing longer than a GUID is kept. */
	assert_true(idcache_put(c, NULL, "jane@contoso.com", ID_B, 20));
	assert_true(idcache_get(c, NULL, "jane@contoso.com", 20, id));
	assert_string_equal(id, ID_B);
	assert_false(idcache_put(c, NULL, "x@contoso.com", ID_A "0", 20));
	assert_int_equal(idcache_count(c), 2);
	idcache_free(c);
	assert_false(idcache_new(0, 1000, &c));
}

static void test_answer_expires_after_ttl_even_when_used(void **state)
{
	(void)state;
	char id[37];
	struct idcache *c;
	assert_true(idcache_new(4, 1000, &c));
	assert_true(idcache_put(c, NULL, "jane@contoso.com", ID_A, 5000));
	assert_true(idcache_get(c, NULL, "jane@contoso.com", 5999, id));
	/* Being used does not keep an answer fresh: a UPN can move to another user. */
	assert_false(idcache_get(c, NULL, "jane@contoso.com", 6000, id));
	idcache_free(c);
}

static void test_full_cache_evicts_least_recently_used(void **state)
{
	(void)state;
	char id[37], upn[32];
	struct idcache *c;
	assert_true(idcache_new(3, 1000000, &c));
	for (int i = 0; i < 3; i++) {
		snprintf(upn, sizeof upn, "u%d@contoso.com", i);
		assert_true(idcache_put(c, NULL, upn, ID_A, i));
	}
	assert_true(idcache_get(c, NULL, "u0@contoso.com", 10, id)); /* u1 is now the oldest */
	assert_true(idcache_put(c, NULL, "u3@contoso.com", ID_B, 11));
	assert_int_equal(idcache_count(c), 3);
	assert_false(idcache_get(c, NULL, "u1@contoso.com", 12, id));
	assert_true(idcache_get(c, NULL, "u0@contoso.com", 12, id));
	assert_true(idcache_get(c, NULL, "u2@contoso.com", 12, id));
	assert_true(idcache_get(c, NULL, "u3@contoso.com", 12, id));
	for (int i = 0; i < 1000; i++) {
		snprintf(upn, sizeof upn, "v%d@contoso.com", i);
		assert_true(idcache_put(c, NULL, upn, ID_A, 100 + i));
	}
	assert_int_equal(idcache_count(c), 3);
	idcache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_per_tenant_any_case),
	    cmocka_unit_test(test_answer_expires_after_ttl_even_when_used),
	    cmocka_unit_test(test_full_cache_evicts_least_recently_used),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
