/* test_promtext.c - the Prometheus text reader of `chatprovctl status`. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "promtext.h"

static struct promtext *parse(const char *text)
{
	char err[256];
	struct promtext *pt = NULL;
	if (!promtext_parse(text, strlen(text), &pt, err, sizeof err))
		fail_msg("%s", err);
	return pt;
}

static double sum_of(const struct promtext *pt, const char *name, const char *label,
                     const char *value)
{
	double v = NAN;
	assert_true(promtext_sum(pt, name, label, value, &v));
	return v;
}

static void test_samples_labels_values(void **state)
{
	(void)state;
	struct promtext *pt = parse("# HELP q Queued.\n# TYPE q gauge\n"
	                            "q{tenant=\"default\"} 12\n"
	                            "q{tenant=\"fab\\\"ri\\\\kam\\n\"} 3 1700000000000\n"
	                            "eta{tenant=\"\"} +Inf\n"
	                            "up 1\n"
	                            "r_total{tenant=\"a\",status=\"failed\"} 2\r\n"
	                            "r_total{status=\"failed\",tenant=\"b\",} 5\n\n");
	assert_int_equal(promtext_count(pt), 6);
	assert_string_equal(promtext_label(pt, 1, "tenant"), "fab\"ri\\kam\n");
	assert_null(promtext_label(pt, 3, "tenant"));
	assert_true(sum_of(pt, "q", NULL, NULL) == 15);
	assert_true(sum_of(pt, "q", "tenant", "default") == 12);
	assert_true(isinf(sum_of(pt, "eta", "tenant", "")));
	assert_true(sum_of(pt, "up", "tenant", "") == 1); /* no label reads as "" */
	assert_true(sum_of(pt, "r_total", "status", "failed") == 7);
	double v;
	assert_false(promtext_sum(pt, "q", "tenant", "nobody", &v));
	assert_false(promtext_sum(pt, "missing", NULL, NULL, &v));
	promtext_free(pt);
}

static void test_malformed_lines_fail_with_their_number(void **state)
{
	(void)state;
	static const char *const bad[] = {
	    "q{tenant=default} 1\n", "q{tenant=\"x\" 1\n", "q{tenant=\"x\"} \n", "q 1 2 3\n",
	    "q{=\"x\"} 1\n",         "9q 1\n",             "q{tenant=\"x\\q\"} 1\n", "q 1x\n",
	    "q{t=\"unterminated} 1\n"};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		char text[128], err[128];
		struct promtext *pt = NULL;
		snprintf(text, sizeof text, "ok 1\n%s", bad[i]);
		if (promtext_parse(text, strlen(text), &pt, err, sizeof err))
			fail_msg("accepted '%s'", bad[i]);
		assert_non_null(strstr(err, "line 2"));
	}
}

static void test_reads_what_the_registry_renders(void **state)
{
	(void)state;
	char err[256];
	struct metrics *m = NULL;
	struct metrics_family *fam = NULL;
	assert_true(metrics_new(0, &m, err, sizeof err));
	struct metrics_spec spec = {.name = "chatprov_backlog_events",
	                            .help = "Work \"to\" do\\.",
	                            .type = METRICS_GAUGE,
	                            .labels = (const char *const[]){"tenant", NULL}};
	assert_true(metrics_register(m, &spec, &fam, err, sizeof err));
	metrics_gauge_set(metrics_series(fam, METRICS_LABELS("")), 42);
	metrics_gauge_set(metrics_series(fam, METRICS_LABELS("a\"b")), 7.5);
	char *text = NULL;
	size_t len = 0;
	assert_true(metrics_render(m, &text, &len));
	struct promtext *pt = parse(text);
	assert_true(sum_of(pt, "chatprov_backlog_events", "tenant", "") == 42);
	assert_true(sum_of(pt, "chatprov_backlog_events", "tenant", "a\"b") == 7.5);
	promtext_free(pt);
	free(text);
	metrics_free(m);
}

static void test_too_many_labels_or_too_long_values_refused(void **state)
{
	(void)state;
	char err[128];
	struct promtext *pt = NULL;
	/* More labels than the bound. */
	char line[1024] = "q{";
	for (int i = 0; i <= PROMTEXT_MAX_LABELS; i++)
		snprintf(line + strlen(line), sizeof line - strlen(line), "l%d=\"v\",", i);
	strcat(line, "} 1\n");
	assert_false(promtext_parse(line, strlen(line), &pt, err, sizeof err));
	/* A label value over PROMTEXT_MAX_VALUE bytes. */
	size_t n = PROMTEXT_MAX_VALUE + 64;
	char *big = malloc(n + 32);
	assert_non_null(big);
	strcpy(big, "q{l=\"");
	memset(big + 5, 'x', n);
	strcpy(big + 5 + n, "\"} 1\n");
	assert_false(promtext_parse(big, strlen(big), &pt, err, sizeof err));
	free(big);
	/* Over the size bound: refused before reading. */
	assert_false(promtext_parse("", (size_t)PROMTEXT_MAX_BYTES + 1, &pt, err, sizeof err));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_samples_labels_values),
	    cmocka_unit_test(test_malformed_lines_fail_with_their_number),
	    cmocka_unit_test(test_reads_what_the_registry_renders),
	    cmocka_unit_test(test_too_many_labels_or_too_long_values_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
