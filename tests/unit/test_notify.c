/* test_notify.c - plays systemd's part: a datagram NOTIFY_SOCKET receives what we send. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "notify.h"

struct sock {
	char dir[64];
	char path[100];
	int fd;
};

static int setup(void **state)
{
	struct sock *s = calloc(1, sizeof(*s));
	if (!s)
		return -1;
	snprintf(s->dir, sizeof(s->dir), "/tmp/chatprov-notify-XXXXXX");
	if (!mkdtemp(s->dir))
		return -1;
	snprintf(s->path, sizeof(s->path), "%s/notify.sock", s->dir);
	s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->path);
	if (s->fd < 0 || bind(s->fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		return -1;
	setenv("NOTIFY_SOCKET", s->path, 1);
	unsetenv("WATCHDOG_USEC");
	unsetenv("WATCHDOG_PID");
	*state = s;
	return 0;
}

static int teardown(void **state)
{
	struct sock *s = *state;
	close(s->fd);
	unlink(s->path);
	rmdir(s->dir);
	free(s);
	unsetenv("NOTIFY_SOCKET");
	return 0;
}

/* The next datagram, or "" if none is queued (sd_notify's sendmsg is synchronous). */
static const char *next_msg(struct sock *s)
{
	static char buf[1024];
	ssize_t n = recv(s->fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	if (n < 0) {
		assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
		n = 0;
	}
	buf[n] = '\0';
	return buf;
}

static void test_state_messages_and_no_assignment_smuggled_in_status(void **state)
{
	struct sock *s = *state;
	notify_ready();
	assert_string_equal(next_msg(s), "READY=1");
	notify_stopping();
	assert_string_equal(next_msg(s), "STOPPING=1");
	notify_extend_timeout(15000000);
	assert_string_equal(next_msg(s), "EXTEND_TIMEOUT_USEC=15000000");
	notify_status("in flight %d, done %d", 3, 42);
	assert_string_equal(next_msg(s), "STATUS=in flight 3, done 42");
	/* A newline in the text must not smuggle in another assignment. */
	notify_status("a\nREADY=1");
	assert_string_equal(next_msg(s), "STATUS=a READY=1");
	assert_string_equal(next_msg(s), "");
}

static void test_reloading_carries_monotonic_time(void **state)
{
	struct sock *s = *state;
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t before = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	notify_reloading();
	const char *msg = next_msg(s);
	const char *prefix = "RELOADING=1\nMONOTONIC_USEC=";
	assert_memory_equal(msg, prefix, strlen(prefix));
	char *end;
	uint64_t usec = strtoull(msg + strlen(prefix), &end, 10);
	assert_int_equal(*end, '\0');
	assert_true(usec >= before && usec < before + 5000000u);
}

static void test_noop_without_socket(void **state)
{
	struct sock *s = *state;
	unsetenv("NOTIFY_SOCKET");
	notify_ready();
	notify_status("x");
	setenv("WATCHDOG_USEC", "1000000", 1);
	struct notify_watchdog wd;
	notify_watchdog_init(&wd);
	notify_watchdog_kick(&wd, 0, true);
	assert_string_equal(next_msg(s), "");
	setenv("NOTIFY_SOCKET", s->path, 1);
}

static void test_watchdog_disabled(void **state)
{
	struct sock *s = *state;
	struct notify_watchdog wd;
	notify_watchdog_init(&wd);
	assert_false(wd.enabled);
	assert_int_equal(notify_watchdog_interval_ms(&wd), 0);
	assert_false(notify_watchdog_kick(&wd, 100000, true));
	assert_string_equal(next_msg(s), "");
	/* WATCHDOG_PID naming another process: not ours to serve. */
	setenv("WATCHDOG_USEC", "2000000", 1);
	setenv("WATCHDOG_PID", "1", 1);
	notify_watchdog_init(&wd);
	assert_false(wd.enabled);
}

static void set_watchdog_env(const char *usec)
{
	char pid[32];
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	setenv("WATCHDOG_USEC", usec, 1);
	setenv("WATCHDOG_PID", pid, 1);
}

/* Counts WATCHDOG=1 datagrams queued on the socket. */
static int drain_pings(struct sock *s)
{
	int n = 0;
	for (const char *m = next_msg(s); *m; m = next_msg(s)) {
		assert_string_equal(m, "WATCHDOG=1");
		n++;
	}
	return n;
}

static void test_watchdog_cadence(void **state)
{
	struct sock *s = *state;
	set_watchdog_env("2000000"); /* 2 s: interval 1000 ms, at most one ping per 500 ms */
	struct notify_watchdog wd;
	notify_watchdog_init(&wd);
	assert_true(wd.enabled);
	assert_int_equal(wd.timeout_usec, 2000000);
	assert_int_equal(notify_watchdog_interval_ms(&wd), 1000);

	/* A loop that wakes every 100 ms for 10 s of (simulated) monotonic time. Each ping is
	 * read at once: the socket queues only ~10 datagrams before sd_notify blocks. */
	int64_t t0 = 1000000, last = -1, max_gap = 0;
	int sent = 0;
	for (int64_t t = t0; t <= t0 + 10000; t += 100) {
		bool kicked = notify_watchdog_kick(&wd, t, true);
		assert_int_equal(drain_pings(s), kicked ? 1 : 0);
		if (!kicked)
			continue;
		if (last >= 0 && t - last > max_gap)
			max_gap = t - last;
		assert_true(last < 0 || t - last >= 500);
		last = t;
		sent++;
	}
	assert_int_equal(sent, 21);
	assert_int_equal(max_gap, 500);

	/* A loop that wakes exactly every interval pings every time. */
	sent = 0;
	for (int64_t t = t0 + 20000; t < t0 + 25000; t += notify_watchdog_interval_ms(&wd)) {
		sent += notify_watchdog_kick(&wd, t, true);
		assert_int_equal(drain_pings(s), 1);
	}
	assert_int_equal(sent, 5);
}

static void test_watchdog_withheld_without_progress(void **state)
{
	struct sock *s = *state;
	set_watchdog_env("2000000");
	struct notify_watchdog wd;
	notify_watchdog_init(&wd);
	assert_true(notify_watchdog_kick(&wd, 0, true));
	assert_int_equal(drain_pings(s), 1);
	/* Workers stuck: nothing for 5 s, however often the loop asks. */
	for (int64_t t = 100; t <= 5000; t += 100)
		assert_false(notify_watchdog_kick(&wd, t, false));
	assert_true(wd.stalled);
	assert_int_equal(drain_pings(s), 0);
	/* Progress resumes: the very next call pings. */
	assert_true(notify_watchdog_kick(&wd, 5100, true));
	assert_false(wd.stalled);
	assert_int_equal(drain_pings(s), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_state_messages_and_no_assignment_smuggled_in_status, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reloading_carries_monotonic_time, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_noop_without_socket, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watchdog_disabled, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watchdog_cadence, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_watchdog_withheld_without_progress, setup,
	                                    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
