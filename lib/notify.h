/*
 * notify.h - the systemd notify protocol (sd_notify): readiness, reload, stop, status and
 * the watchdog.
 *
 * Every call is a no-op when NOTIFY_SOCKET is unset (not started by systemd, or a unit
 * that is not Type=notify), so the daemon calls them unconditionally. A failure to send is
 * logged, never fatal: systemd acts on a missing READY=1 or WATCHDOG=1 itself.
 */
#ifndef CHATPROV_NOTIFY_H
#define CHATPROV_NOTIFY_H

#include "common.h"

/* READY=1 (also after a reload, to end RELOADING=1). */
void notify_ready(void);
/* RELOADING=1 with MONOTONIC_USEC=<now>, as systemd's reload protocol asks. */
void notify_reloading(void);
/* STOPPING=1: the drain begins. */
void notify_stopping(void);
/* STATUS=<text>, shown by systemctl status. Newlines in the text are replaced by spaces. */
void notify_status(const char *fmt, ...) CP_PRINTF(1, 2);
/* EXTEND_TIMEOUT_USEC=<usec>: the current start/stop phase needs at least this much longer. */
void notify_extend_timeout(uint64_t usec);

/*
 * Watchdog state of the main loop: a plain record so it can live on the loop's stack.
 * systemd restarts the service when no WATCHDOG=1 arrives within WATCHDOG_USEC; the loop
 * sends it only while its workers report progress, so a stuck worker leads to a restart.
 */
struct notify_watchdog {
	bool enabled;
	uint64_t timeout_usec; /* WATCHDOG_USEC, 0 when disabled */
	int64_t last_kick_ms;  /* monotonic ms of the last WATCHDOG=1, -1 before the first */
	bool stalled;          /* a kick was skipped for lack of progress (logged once) */
};

/* Reads WATCHDOG_USEC/WATCHDOG_PID (sd_watchdog_enabled). */
void notify_watchdog_init(struct notify_watchdog *wd);
/*
 * How often the main loop must call notify_watchdog_kick(): half of WATCHDOG_USEC
 * (at least 1 ms), or 0 when the watchdog is disabled.
 */
int64_t notify_watchdog_interval_ms(const struct notify_watchdog *wd);
/*
 * Sends WATCHDOG=1 if the watchdog is enabled, progressing is true and at least half an
 * interval (a quarter of WATCHDOG_USEC) has passed since the last one; calling it more
 * often is cheap and sends nothing. Returns true when a ping was sent.
 */
bool notify_watchdog_kick(struct notify_watchdog *wd, int64_t now_ms, bool progressing);

#endif
