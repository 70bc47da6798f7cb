/*
 * eta.h - ETA of a backlog under token buckets: a model of the scheduler (pacer.h), with no
 * state of its own.
 */
#ifndef CHATPROV_ETA_H
#define CHATPROV_ETA_H

#include <stdbool.h>
#include <stddef.h>

#include "common.h"

/*
 * ETA of a backlog under the buckets (`chatprovctl plan`, chatprov_backlog_eta_seconds).
 * The fluid model of what pacer_take does: each tenant first sends what its bucket holds
 * (tokens, no more than the global bucket's tokens shared fairly), then at its rate; when the
 * tenants together could send faster than the global rate, the global rate is shared among
 * the tenants with work left, as the round-robin shares it (max-min fair: a tenant below its
 * share keeps its rate, the rest split what remains). A tenant held below its own rate saves
 * tokens in its bucket (up to the bucket's size) and spends them later above its rate, as
 * far as the global bucket allows. Retry-After blocks, 429s and Graph's one-on-one dedup are
 * not predicted. Against the scheduler itself the model is within a token interval.
 */
struct eta_tenant {
	double events; /* work to do */
	double rate;   /* requests per window the tenant may send */
	double tokens; /* requests it may send at once (eta_full_bucket for a fresh start) */
	double eta_s;  /* out: seconds until its last request may leave (0: none to send) */
};

/* The tokens of a full bucket of this rate per window: what a fresh scheduler sends at once. */
double eta_full_bucket(double per_window);

/* What a fresh tenant sends at once with slow start (pacer_limits.slow_start_tokens). */
double eta_first_burst(double per_window, double slow_start_tokens);

/*
 * Fills every t[i].eta_s and *total_s (the latest of them); INFINITY where work meets a zero
 * rate. False on invalid input (negative or non-finite values, window_s <= 0) or out of memory.
 */
bool eta_compute(struct eta_tenant *t, size_t n, double global_rate, double global_tokens,
               double window_s, double *total_s) CP_MUSTCHECK;

#endif
