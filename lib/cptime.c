/* cptime.c - clocks and timestamps. */
#include "cptime.h"

#include <math.h>
#include <stdio.h>
#include <time.h>

static int64_t clock_ms(clockid_t id)
{
	struct timespec ts;
	clock_gettime(id, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t cptime_mono_ms(void)
{
	return clock_ms(CLOCK_MONOTONIC);
}

int64_t cptime_wall_ms(void)
{
	return clock_ms(CLOCK_REALTIME);
}

bool cptime_format_rfc3339(int64_t epoch_ms, char *buf, size_t cap)
{
	time_t secs = (time_t)(epoch_ms / 1000);
	struct tm tm;
	if (!gmtime_r(&secs, &tm))
		return false;
	int n = snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
	                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
	                 (int)(epoch_ms % 1000));
	return n > 0 && (size_t)n < cap;
}

/* "1h 02m 03s", "4m 05s", "7s"; "never" for an infinite ETA (a rate of zero). */
void cptime_format_duration(double seconds, char *out, size_t cap)
{
	if (!isfinite(seconds) || seconds > 1e9) {
		snprintf(out, cap, "never");
		return;
	}
	long long s = llround(seconds);
	if (s >= 3600)
		snprintf(out, cap, "%lldh %02lldm %02llds", s / 3600, s / 60 % 60, s % 60);
	else if (s >= 60)
		snprintf(out, cap, "%lldm %02llds", s / 60, s % 60);
	else
		snprintf(out, cap, "%llds", s);
}
