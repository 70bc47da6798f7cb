/*
 * test_secretfile.c - the one secret-file reader: the size bound to the byte, the trim set,
 * what it refuses (missing, not a regular file, empty), and errors that never quote the secret.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "secretfile.h"

#define SECRET "tok.en-Value~1"

static char dir[] = "/tmp/test_secretfile.XXXXXX";
static char path[sizeof dir + 16];

static int setup(void **state)
{
	(void)state;
	if (!mkdtemp(dir))
		return -1;
	snprintf(path, sizeof path, "%s/secret", dir);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	unlink(path);
	return rmdir(dir);
}

static void put(const char *content, size_t len)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	assert_int_equal(fwrite(content, 1, len, f), len);
	assert_int_equal(fclose(f), 0);
}

static void expect_error(size_t max, const char *why)
{
	struct dynbuf out;
	char err[CP_ERRSTR_SIZE], want[CP_ERRSTR_SIZE];
	assert_false(secretfile_read(path, max, "\n", &out, err, sizeof err));
	snprintf(want, sizeof want, "%s: %s", path, why);
	assert_string_equal(err, want);
	assert_null(strstr(err, SECRET));
	assert_int_equal(dynbuf_len(&out), 0);
}

static void test_reads_and_trims_only_the_given_characters(void **state)
{
	(void)state;
	struct dynbuf out;
	char err[CP_ERRSTR_SIZE];
	put(SECRET " \t\r\n", strlen(SECRET) + 4);
	assert_true(secretfile_read(path, 64, "\r\n", &out, err, sizeof err));
	assert_string_equal(dynbuf_str(&out), SECRET " \t");
	dynbuf_wipe(&out);
	assert_true(secretfile_read(path, 64, " \t\r\n", &out, err, sizeof err));
	assert_string_equal(dynbuf_str(&out), SECRET);
	assert_int_equal(dynbuf_len(&out), strlen(SECRET));
	dynbuf_wipe(&out);
}

static void test_size_bound_is_exact(void **state)
{
	(void)state;
	static char big[10001];
	struct dynbuf out;
	char err[CP_ERRSTR_SIZE];
	memset(big, 'x', sizeof big);
	put(big, 10000);
	assert_true(secretfile_read(path, 10000, "\n", &out, err, sizeof err));
	assert_int_equal(dynbuf_len(&out), 10000);
	dynbuf_wipe(&out);
	put(big, 10001);
	expect_error(10000, "secret file is larger than 10000 bytes");
	/* The trailing newline counts: the bound is on the file, not on what is kept. */
	big[10000] = '\n';
	put(big, 10001);
	expect_error(10000, "secret file is larger than 10000 bytes");
}

static void test_refuses_empty_missing_and_irregular_files(void **state)
{
	(void)state;
	struct dynbuf out;
	char err[CP_ERRSTR_SIZE];
	put("", 0);
	expect_error(64, "secret file is empty");
	put("\n\n\n", 3);
	expect_error(64, "secret file is empty");
	unlink(path);
	expect_error(64, "cannot read secret: No such file or directory");
	assert_false(secretfile_read(dir, 64, "\n", &out, err, sizeof err));
	assert_non_null(strstr(err, "secret is not a regular file"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_reads_and_trims_only_the_given_characters),
	    cmocka_unit_test(test_size_bound_is_exact),
	    cmocka_unit_test(test_refuses_empty_missing_and_irregular_files),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
