/* test_log.c - journal field lists, the stderr line format, levels. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"

/* The value of field name in f, NUL-terminated in out; NULL if absent. */
static const char *field(const struct log_journal_fields *f, const char *name, char *out,
                         size_t cap)
{
	size_t nl = strlen(name);
	for (size_t i = 0; i < f->n; i++) {
		const char *base = f->iov[i].iov_base;
		size_t len = f->iov[i].iov_len;
		if (len > nl && memcmp(base, name, nl) == 0 && base[nl] == '=') {
			snprintf(out, cap, "%.*s", (int)(len - nl - 1), base + nl + 1);
			return out;
		}
	}
	return NULL;
}

static void test_journal_all_fields(void **state)
{
	(void)state;
	struct log_journal_fields f;
	char v[2048];
	struct log_ctx ctx = {.request_id = "hr-2026-000123",
	                      .chat_id = "19:abc@thread.v2",
	                      .graph_request_id = "11111111-2222-3333-4444-555555555555",
	                      .client_request_id = "66666666-7777-5888-9999-000000000000",
	                      .tenant = "fabrikam"};
	log_init("chatprovd");
	log_journal_fields(LOG_LVL_WARNING, &ctx, "throttled by Graph (429)", &f);
	assert_int_equal(f.n, 8);
	assert_string_equal(field(&f, "MESSAGE", v, sizeof v), "throttled by Graph (429)");
	assert_string_equal(field(&f, "PRIORITY", v, sizeof v), "4");
	assert_string_equal(field(&f, "SYSLOG_IDENTIFIER", v, sizeof v), "chatprovd");
	assert_string_equal(field(&f, "CHATPROV_REQUEST_ID", v, sizeof v), "hr-2026-000123");
	assert_string_equal(field(&f, "CHATPROV_CHAT_ID", v, sizeof v), "19:abc@thread.v2");
	assert_string_equal(field(&f, "GRAPH_REQUEST_ID", v, sizeof v),
	                    "11111111-2222-3333-4444-555555555555");
	assert_string_equal(field(&f, "GRAPH_CLIENT_REQUEST_ID", v, sizeof v),
	                    "66666666-7777-5888-9999-000000000000");
	assert_string_equal(field(&f, "CHATPROV_TENANT", v, sizeof v), "fabrikam");
}

/* NULL and empty values are left out: "journalctl CHATPROV_CHAT_ID=" matches nothing stray. */
static void test_journal_skips_empty(void **state)
{
	(void)state;
	struct log_journal_fields f;
	char v[2048];
	struct log_ctx ctx = {.request_id = "r-1", .chat_id = "", .graph_request_id = NULL};
	log_journal_fields(LOG_LVL_ERROR, &ctx, "refused", &f);
	assert_int_equal(f.n, 4);
	assert_string_equal(field(&f, "PRIORITY", v, sizeof v), "3");
	assert_string_equal(field(&f, "CHATPROV_REQUEST_ID", v, sizeof v), "r-1");
	assert_null(field(&f, "CHATPROV_CHAT_ID", v, sizeof v));
	assert_null(field(&f, "GRAPH_REQUEST_ID", v, sizeof v));
	assert_null(field(&f, "GRAPH_CLIENT_REQUEST_ID", v, sizeof v));
	assert_null(field(&f, "CHATPROV_TENANT", v, sizeof v));

	log_journal_fields(LOG_LVL_DEBUG, NULL, "plain", &f);
	assert_int_equal(f.n, 3);
	assert_string_equal(field(&f, "PRIORITY", v, sizeof v), "7");
	assert_string_equal(field(&f, "MESSAGE", v, sizeof v), "plain");
}

/* A multi-line message stays one field (sd_journal_sendv encodes it), never new fields. */
static void test_journal_multiline_and_long(void **state)
{
	(void)state;
	struct log_journal_fields f;
	char v[sizeof f.buf];
	log_journal_fields(LOG_LVL_INFO, NULL, "line one\nGRAPH_REQUEST_ID=forged", &f);
	assert_int_equal(f.n, 3);
	assert_null(field(&f, "GRAPH_REQUEST_ID", v, sizeof v));
	assert_string_equal(field(&f, "MESSAGE", v, sizeof v), "line one\nGRAPH_REQUEST_ID=forged");

	/* Oversized values are truncated, the identifying fields survive. */
	char big[6000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = '\0';
	struct log_ctx ctx = {.request_id = "r-2"};
	log_journal_fields(LOG_LVL_NOTICE, &ctx, big, &f);
	assert_int_equal(f.n, 4);
	assert_string_equal(field(&f, "CHATPROV_REQUEST_ID", v, sizeof v), "r-2");
	assert_non_null(field(&f, "MESSAGE", v, sizeof v));
	assert_true(strlen(v) > 3000 && strlen(v) < sizeof f.buf);
	for (size_t i = 0; i < f.n; i++)
		assert_true((char *)f.iov[i].iov_base + f.iov[i].iov_len <= f.buf + sizeof f.buf);
}

/* Runs fn with stderr redirected to a file; returns what it wrote (static buffer). */
static const char *capture_stderr(void (*fn)(void))
{
	static char out[8192];
	char path[] = "/tmp/chatprov-log-XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	fflush(stderr);
	int saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fd, 2), 2);
	fn();
	fflush(stderr);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	ssize_t n = pread(fd, out, sizeof out - 1, 0);
	assert_true(n >= 0);
	out[n] = '\0';
	close(fd);
	unlink(path);
	return out;
}

static void log_some(void)
{
	struct log_ctx ctx = {
	    .request_id = "r-3", .chat_id = "19:c@thread.v2", .graph_request_id = "g-1"};
	log_with(LOG_LVL_WARNING, &ctx, "Graph refused the chat: %s", "Forbidden");
	log_debug("not shown at info");
	log_error("plain error");
	log_notice("two\nlines\r");
}

static void test_stderr_format(void **state)
{
	(void)state;
	unsetenv("JOURNAL_STREAM");
	log_init("chatprovd");
	log_set_level(LOG_LVL_INFO);
	const char *out = capture_stderr(log_some);
	const char *first =
	    strstr(out, " chatprovd [warning] Graph refused the chat: Forbidden "
	                "request_id=r-3 chat_id=19:c@thread.v2 graph_request_id=g-1\n");
	assert_non_null(first);
	/* An RFC 3339 UTC time stamp starts each line. */
	assert_true(first - out == 24 && out[4] == '-' && out[10] == 'T' && out[23] == 'Z');
	assert_null(strstr(out, "not shown"));
	assert_non_null(strstr(out, " chatprovd [error] plain error\n"));
	assert_non_null(strstr(out, " chatprovd [notice] two lines \n"));
}

/* JOURNAL_STREAM that does not name our stderr (a child of a journald-run process whose
 * stderr was redirected) keeps the stderr format. */
static void test_journal_stream_must_match(void **state)
{
	(void)state;
	struct stat st;
	assert_int_equal(fstat(2, &st), 0);
	char js[64];
	snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
	         (unsigned long long)st.st_ino + 1);
	setenv("JOURNAL_STREAM", js, 1);
	log_init("chatprovd");
	const char *out = capture_stderr(log_some);
	assert_non_null(strstr(out, "[error] plain error"));
	setenv("JOURNAL_STREAM", "garbage", 1);
	log_init("chatprovd");
	out = capture_stderr(log_some);
	assert_non_null(strstr(out, "[error] plain error"));
	unsetenv("JOURNAL_STREAM");
	log_init("chatprovd");
}

static void test_level_names_and_filtering(void **state)
{
	(void)state;
	enum log_level l;
	assert_true(log_parse_level("debug", &l) && l == LOG_LVL_DEBUG);
	assert_true(log_parse_level("warning", &l) && l == LOG_LVL_WARNING);
	assert_false(log_parse_level("warn", &l));
	assert_false(log_parse_level("", &l));
	log_set_level(LOG_LVL_ERROR);
	assert_int_equal(log_get_level(), LOG_LVL_ERROR);
	assert_string_equal(log_level_name(LOG_LVL_NOTICE), "notice");
	const char *out = capture_stderr(log_some);
	assert_null(strstr(out, "[warning]"));
	assert_non_null(strstr(out, "[error] plain error"));
	log_set_level(LOG_LVL_INFO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_journal_all_fields),
	    cmocka_unit_test(test_journal_skips_empty),
	    cmocka_unit_test(test_journal_multiline_and_long),
	    cmocka_unit_test(test_stderr_format),
	    cmocka_unit_test(test_journal_stream_must_match),
	    cmocka_unit_test(test_level_names_and_filtering),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
