/* notify.c - sd_notify wrappers and the progress-gated watchdog. */
#include "notify.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include "log.h"

/* sd_notify returns < 0 on error, 0 without NOTIFY_SOCKET, > 0 when sent. */
static void send_state(const char *state)
{
	int rc = sd_notify(0, state);
	if (rc < 0) {
		const char *nl = strchr(state, '\n');
		int n = nl ? (int)(nl - state) : (int)strlen(state);
		log_warning("sd_notify(%.*s): %s", n, state, strerror(-rc));
	}
}

void notify_ready(void)
{
	send_state("READY=1");
}

void notify_reloading(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t usec = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
	char msg[64];
	snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%" PRIu64, usec);
	send_state(msg);
}

void notify_stopping(void)
{
	send_state("STOPPING=1");
}

void notify_status(const char *fmt, ...)
{
	/* One datagram line: "STATUS=" + the text, which must not start new assignments. */
	char msg[512];
	int off = snprintf(msg, sizeof(msg), "STATUS=");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + off, sizeof(msg) - (size_t)off, fmt, ap);
	va_end(ap);
	for (char *p = msg; *p; p++) {
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	}
	send_state(msg);
}

void notify_extend_timeout(uint64_t usec)
{
	char msg[64];
	snprintf(msg, sizeof(msg), "EXTEND_TIMEOUT_USEC=%" PRIu64, usec);
	send_state(msg);
}

void notify_watchdog_init(struct notify_watchdog *wd)
{
	uint64_t usec = 0;
	memset(wd, 0, sizeof(*wd));
	wd->last_kick_ms = -1;
	int rc = sd_watchdog_enabled(0, &usec);
	if (rc < 0)
		log_warning("watchdog settings unusable: %s", strerror(-rc));
	if (rc > 0 && usec > 0) {
		wd->enabled = true;
		wd->timeout_usec = usec;
	}
}

int64_t notify_watchdog_interval_ms(const struct notify_watchdog *wd)
{
	if (!wd->enabled)
		return 0;
	int64_t ms = (int64_t)(wd->timeout_usec / 2000u);
	return ms > 0 ? ms : 1;
}

bool notify_watchdog_kick(struct notify_watchdog *wd, int64_t now_ms, bool progressing)
{
	if (!wd->enabled)
		return false;
	int64_t gap = notify_watchdog_interval_ms(wd) / 2;
	if (wd->last_kick_ms >= 0 && now_ms - wd->last_kick_ms < gap)
		return false;
	if (!progressing) {
		/* Deliberately silent towards systemd: it will restart us at WATCHDOG_USEC. */
		if (!wd->stalled)
			log_error("no progress: withholding watchdog pings (systemd restarts the "
			          "service %" PRIu64 " ms after the last one)",
			          wd->timeout_usec / 1000u);
		wd->stalled = true;
		return false;
	}
	if (wd->stalled)
		log_notice("progress resumed: watchdog pings restarted");
	wd->stalled = false;
	wd->last_kick_ms = now_ms;
	send_state("WATCHDOG=1");
	return true;
}
