/*
 * cptime.h - clocks and timestamps.
 *
 * Deadlines and rates use the monotonic clock (milliseconds); results carry wall-clock
 * times formatted as RFC 3339 with milliseconds in UTC.
 */
#ifndef CHATPROV_CPTIME_H
#define CHATPROV_CPTIME_H

#include "common.h"

/* Milliseconds on CLOCK_MONOTONIC: for deadlines, rates and intervals. */
int64_t cptime_mono_ms(void);

/* Milliseconds since the Unix epoch on CLOCK_REALTIME: for timestamps people read. */
int64_t cptime_wall_ms(void);

/* Formats epoch milliseconds as "2026-11-26T10:00:00.412Z". cap must be >= 25. */
bool cptime_format_rfc3339(int64_t epoch_ms, char *buf, size_t cap) CP_MUSTCHECK;

/* A duration for people: "1h 02m 03s", "4m 05s", "7s"; "never" when infinite. */
void cptime_format_duration(double seconds, char *out, size_t cap);

#endif
