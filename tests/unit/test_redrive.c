/* test_redrive.c - DLQ record filters, the copy's headers, --since times. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <string.h>

#include "redrive.h"

#define EVENT         "{\"id\":\"e1\",\"chatType\":\"group\",\"members\":[]}"
#define EVENT_TENANT  "{\"id\":\"e2\",\"tenant\":\"fabrikam\"}"
#define NOW_MS        1796208000000LL /* 2026-12-02T10:40:00Z */

static rd_kafka_headers_t *failed_headers(const char *code)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(8);
	assert_int_equal(rd_kafka_header_add(h, "traceparent", -1, "00-abc-01", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "chatprov-status", -1, "failed", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "chatprov-error-code", -1, code, -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "chatprov-http-status", -1, "403", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "x-correlation-id", -1, "c-1", -1), 0);
	return h;
}

static rd_kafka_headers_t *legacy_rejected_headers(void)
{
	rd_kafka_headers_t *h = rd_kafka_headers_new(4);
	assert_int_equal(rd_kafka_header_add(h, "chatprov-reject-reason", -1, "members: missing",
	                                     -1),
	                 0);
	assert_int_equal(rd_kafka_header_add(h, "chatprov-source-offset", -1, "7", -1), 0);
	return h;
}

static bool match(const struct redrive_filter *f, const rd_kafka_headers_t *h, const char *value,
                  int64_t ts)
{
	return redrive_match(f, h, value, strlen(value), ts);
}

static void test_default_filter_takes_failed_only(void **state)
{
	(void)state;
	struct redrive_filter f = {.status = "failed", .since_ms = INT64_MIN};
	rd_kafka_headers_t *failed = failed_headers("Forbidden"), *rej = legacy_rejected_headers();
	assert_true(match(&f, failed, EVENT, NOW_MS));
	assert_false(match(&f, rej, EVENT, NOW_MS));
	assert_false(match(&f, NULL, EVENT, NOW_MS)); /* no DLQ headers: not a DLQ record */
	f.status = "rejected";
	assert_false(match(&f, failed, EVENT, NOW_MS));
	assert_true(match(&f, rej, "not json", NOW_MS));
	rd_kafka_headers_destroy(failed);
	rd_kafka_headers_destroy(rej);
}

static void test_code_filter(void **state)
{
	(void)state;
	struct redrive_filter f = {.status = "failed", .code = "Forbidden", .since_ms = INT64_MIN};
	rd_kafka_headers_t *forbidden = failed_headers("Forbidden"), *nf = failed_headers("NotFound");
	assert_true(match(&f, forbidden, EVENT, NOW_MS));
	assert_false(match(&f, nf, EVENT, NOW_MS));
	f.code = "forbidden"; /* Graph's codes are compared exactly */
	assert_false(match(&f, forbidden, EVENT, NOW_MS));
	/* A rejected copy without a code header has its result's code. */
	rd_kafka_headers_t *rej = legacy_rejected_headers();
	f = (struct redrive_filter){.status = "rejected", .code = "InvalidRequest",
	                            .since_ms = INT64_MIN};
	assert_true(match(&f, rej, EVENT, NOW_MS));
	rd_kafka_headers_destroy(forbidden);
	rd_kafka_headers_destroy(nf);
	rd_kafka_headers_destroy(rej);
}

static void test_tenant_filter_reads_the_event(void **state)
{
	(void)state;
	rd_kafka_headers_t *h = failed_headers("Forbidden");
	struct redrive_filter f = {.status = "failed", .tenant = "fabrikam", .since_ms = INT64_MIN};
	assert_true(match(&f, h, EVENT_TENANT, NOW_MS));
	assert_false(match(&f, h, EVENT, NOW_MS));
	assert_false(match(&f, h, "{\"tenant\": 5}", NOW_MS));
	assert_false(match(&f, h, "[\"fabrikam\"]", NOW_MS));
	assert_false(match(&f, h, "{\"tenant\":\"fabrikam\"", NOW_MS)); /* truncated JSON */
	assert_false(match(&f, h, "", NOW_MS));
	/* "default" is the profile of events without a tenant (or a null one). */
	f.tenant = "default";
	assert_true(match(&f, h, EVENT, NOW_MS));
	assert_true(match(&f, h, "{\"tenant\":null}", NOW_MS));
	assert_false(match(&f, h, EVENT_TENANT, NOW_MS));
	/* A tenant value with a NUL inside does not match by its prefix. */
	assert_false(redrive_match(&(struct redrive_filter){.status = "failed", .tenant = "fab",
	                                                    .since_ms = INT64_MIN},
	                           h, "{\"tenant\":\"fab\\u0000rikam\"}", 27, NOW_MS));
	rd_kafka_headers_destroy(h);
}

static void test_since_filter(void **state)
{
	(void)state;
	rd_kafka_headers_t *h = failed_headers("Forbidden");
	struct redrive_filter f = {.status = "failed", .since_ms = NOW_MS};
	assert_true(match(&f, h, EVENT, NOW_MS));
	assert_true(match(&f, h, EVENT, NOW_MS + 1));
	assert_false(match(&f, h, EVENT, NOW_MS - 1));
	assert_false(match(&f, h, EVENT, -1)); /* no timestamp: not known to be recent */
	rd_kafka_headers_destroy(h);
}

static void test_copy_headers_drop_chatprov_ones(void **state)
{
	(void)state;
	rd_kafka_headers_t *h = failed_headers("Forbidden");
	assert_int_equal(rd_kafka_header_add(h, "CHATPROV-Source-Topic", -1, "in", -1), 0);
	assert_int_equal(rd_kafka_header_add(h, "empty", -1, NULL, 0), 0);
	rd_kafka_headers_t *copy = redrive_headers(h);
	assert_non_null(copy);
	assert_int_equal(rd_kafka_header_cnt(copy), 3);
	const char *name;
	const void *v;
	size_t len;
	assert_int_equal(rd_kafka_header_get_all(copy, 0, &name, &v, &len), 0);
	assert_string_equal(name, "traceparent");
	assert_memory_equal(v, "00-abc-01", len);
	assert_int_equal(rd_kafka_header_get_all(copy, 1, &name, &v, &len), 0);
	assert_string_equal(name, "x-correlation-id");
	assert_int_equal(rd_kafka_header_get_all(copy, 2, &name, &v, &len), 0);
	assert_string_equal(name, "empty");
	assert_null(v);
	rd_kafka_headers_destroy(copy);
	copy = redrive_headers(NULL);
	assert_non_null(copy);
	assert_int_equal(rd_kafka_header_cnt(copy), 0);
	rd_kafka_headers_destroy(copy);
	assert_false(redrive_truncated(h));
	assert_int_equal(rd_kafka_header_add(h, "chatprov-dlq-truncated", -1, "2000000", -1), 0);
	assert_true(redrive_truncated(h));
	rd_kafka_headers_destroy(h);
}

static void test_parse_time(void **state)
{
	(void)state;
	int64_t ms = 0;
	assert_true(redrive_parse_time("2026-12-02T10:40:00Z", &ms));
	assert_int_equal(ms, NOW_MS);
	assert_true(redrive_parse_time("2026-12-02T10:40:00.250Z", &ms));
	assert_int_equal(ms, NOW_MS + 250);
	assert_true(redrive_parse_time("2026-12-02T11:40:00+01:00", &ms));
	assert_int_equal(ms, NOW_MS);
	assert_true(redrive_parse_time("2026-12-02T09:10:00-01:30", &ms));
	assert_int_equal(ms, NOW_MS);
	static const char *const bad[] = {"", "2026-12-02", "2026-12-02 10:40:00Z",
	                                  "2026-12-02T10:40:00", "2026-12-02T10:40:00+1:00",
	                                  "2026-12-02T10:40:00Zjunk", "2026-13-02T10:40:00Z",
	                                  "2026-12-02T10:40:00.Z", "yesterday"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (redrive_parse_time(bad[i], &ms))
			fail_msg("accepted '%s'", bad[i]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_default_filter_takes_failed_only),
	    cmocka_unit_test(test_code_filter),
	    cmocka_unit_test(test_tenant_filter_reads_the_event),
	    cmocka_unit_test(test_since_filter),
	    cmocka_unit_test(test_copy_headers_drop_chatprov_ones),
	    cmocka_unit_test(test_parse_time),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
