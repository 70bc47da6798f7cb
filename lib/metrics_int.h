/*
 * metrics_int.h - what the registry (metrics.c) and its HTTP endpoint (metrics_http.c)
 * share. Private to them: the rest of the library uses metrics.h.
 */
#ifndef CHATPROV_METRICS_INT_H
#define CHATPROV_METRICS_INT_H

#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "metrics.h"

/* Power of two; with the default bound of 10,000 series chains stay short. */
#define HASH_SIZE 4096

struct metrics {
	pthread_rwlock_t lock; /* families, series lists, hash table, n_series */
	struct metrics_family *families, *families_tail;
	struct metrics_series *table[HASH_SIZE];
	size_t n_series, max_series;
	struct metrics_series *dropped;

	pthread_mutex_t state_lock; /* ready, reason, collect callback */
	bool ready;
	char reason[METRICS_REASON_MAX];
	metrics_collect_fn collect_fn;
	void *collect_arg;

	pthread_mutex_t scrape_lock; /* one scrape (callback + render) at a time */
	struct MHD_Daemon *httpd;
	uint16_t port;
};

#endif
