/*
 * redrive.h - which DLQ records `chatprovctl redrive` copies back to the input topic, and
 * what the copy carries.
 *
 * A DLQ record is the original message (key and value byte for byte, its headers) plus
 * headers chatprovd added, all named chatprov-*: chatprov-status (failed | rejected),
 * chatprov-error-code, chatprov-error-message, chatprov-http-status, the source
 * coordinates, and for a rejected event chatprov-reject-reason (a rejected copy without
 * chatprov-status, as older daemons wrote them, counts as rejected with code
 * InvalidRequest, its result's code). The copy back keeps key, value and the original
 * headers and leaves every chatprov-* header out.
 */
#ifndef CHATPROV_REDRIVE_H
#define CHATPROV_REDRIVE_H

#include <librdkafka/rdkafka.h>

#include "common.h"

struct redrive_filter {
	const char *status; /* "failed" or "rejected" */
	const char *code;   /* Graph's error code (chatprov-error-code); NULL: any */
	const char *tenant; /* the event's "tenant" ("default" when absent); NULL: any */
	int64_t since_ms;   /* only records written at or after this (epoch ms); INT64_MIN: any */
};

/* True when the record (its headers, value and timestamp, epoch ms or -1) matches. */
bool redrive_match(const struct redrive_filter *f, const rd_kafka_headers_t *headers,
                   const void *value, size_t len, int64_t timestamp_ms);

/*
 * A copy of the record's DLQ copy whose value was left out (chatprov-dlq-truncated): it
 * cannot be re-driven.
 */
bool redrive_truncated(const rd_kafka_headers_t *headers);

/* The headers for the copy back: every header but the chatprov-* ones; NULL out of memory. */
rd_kafka_headers_t *redrive_headers(const rd_kafka_headers_t *headers) CP_MUSTCHECK;

/* An RFC 3339 date-time (2026-12-02T10:00:00Z, fractions, +01:00 offsets) as epoch ms. */
bool redrive_parse_time(const char *text, int64_t *epoch_ms) CP_MUSTCHECK;

#endif
