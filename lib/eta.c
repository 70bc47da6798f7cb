/*
 * eta.c - when may the last of a backlog have left? A fluid model of what the scheduler
 * (pacer.c) does with token buckets per tenant and one global bucket: used by
 * `chatprovctl plan` and the daemon's backlog ETA (docs/scheduling.md, "ETA").
 */
#include "eta.h"

#include <math.h>
#include <stdlib.h>

#include "pacer.h"

#define TOKEN_EPS PACER_TOKEN_EPS

double eta_full_bucket(double per_window)
{
	return per_window > 1.0 ? per_window : 1.0;
}

double eta_first_burst(double per_window, double slow_start_tokens)
{
	double full = eta_full_bucket(per_window);
	if (slow_start_tokens <= 0 || slow_start_tokens >= full)
		return full;
	return slow_start_tokens > 1.0 ? slow_start_tokens : 1.0;
}

/*
 * Max-min fair shares of `total` among the entries with left[i] > 0 (water-filling): an
 * entry whose cap is below an equal share of what is left gets its cap, the others split
 * the rest equally. O(n^2): n is the number of tenant profiles (CFG_MAX_TENANTS).
 */
static void fair_shares(size_t n, const double *cap, const double *left, double total,
                        double *alloc)
{
	size_t open = 0;
	for (size_t i = 0; i < n; i++) {
		alloc[i] = left[i] > 0 ? -1 : 0; /* -1: share not settled yet */
		open += left[i] > 0;
	}
	bool settled = true;
	while (open > 0 && settled) {
		double share = total / (double)open;
		settled = false;
		for (size_t i = 0; i < n; i++) {
			if (alloc[i] >= 0 || cap[i] > share)
				continue;
			alloc[i] = cap[i];
			total -= cap[i];
			open--;
			settled = true;
		}
	}
	for (size_t i = 0; i < n; i++)
		if (alloc[i] < 0)
			alloc[i] = total / (double)open;
}

static bool eta_input_ok(const struct eta_tenant *t, size_t n, double global_rate,
                         double global_tokens, double window_s)
{
	if (!isfinite(window_s) || window_s <= 0 || !isfinite(global_rate) || global_rate < 0 ||
	    !isfinite(global_tokens) || global_tokens < 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isfinite(t[i].events) || t[i].events < 0 || !isfinite(t[i].rate) ||
		    t[i].rate < 0 || !isfinite(t[i].tokens) || t[i].tokens < 0)
			return false;
	return true;
}

/* The fluid model's state: per tenant work left and tokens saved; the global bucket's tokens. */
struct fluid {
	size_t n;
	struct eta_tenant *t;
	double *left, *tokens, *burst, *rate, *cap, *alloc; /* per tenant; rates per second */
	double global_tokens, global_burst, global_rate;
	double now;
};

static bool working(const struct fluid *f, size_t i)
{
	return f->left[i] > TOKEN_EPS;
}

/* Sends at once what the tenants' saved tokens allow, within the global bucket's tokens. */
static void fluid_burst(struct fluid *f)
{
	for (size_t i = 0; i < f->n; i++) {
		double sendable = working(f, i) ? floor(f->tokens[i] + TOKEN_EPS) : 0;
		f->cap[i] = sendable < f->left[i] ? sendable : f->left[i];
	}
	fair_shares(f->n, f->cap, f->cap, floor(f->global_tokens + TOKEN_EPS), f->alloc);
	for (size_t i = 0; i < f->n; i++) {
		f->left[i] -= f->alloc[i];
		f->tokens[i] -= f->alloc[i];
		f->global_tokens -= f->alloc[i];
		if (!working(f, i) && f->t[i].eta_s < 0)
			f->t[i].eta_s = f->now;
	}
}

/*
 * The rates until the next event. With tokens in the global bucket every working tenant
 * goes at its own rate (fluid_burst left none with a whole saved token); without, the global
 * rate is shared: a tenant with saved tokens may take more than its own rate, spending them.
 */
static void fluid_rates(struct fluid *f, double *sum)
{
	bool global_free = f->global_tokens >= 1.0 - TOKEN_EPS;
	for (size_t i = 0; i < f->n; i++) {
		f->cap[i] = f->tokens[i] >= 1.0 - TOKEN_EPS && !global_free ? INFINITY : f->rate[i];
		f->alloc[i] = working(f, i) ? f->cap[i] : 0;
	}
	if (!global_free)
		fair_shares(f->n, f->cap, f->left, f->global_rate, f->alloc);
	*sum = 0;
	for (size_t i = 0; i < f->n; i++)
		*sum += f->alloc[i];
}

/* How long the rates hold: until a tenant finishes, runs out of saved tokens, or the global
 * bucket does. INFINITY: never (nothing can move). */
static double fluid_step(const struct fluid *f, double sum)
{
	double step = INFINITY;
	for (size_t i = 0; i < f->n; i++) {
		if (!working(f, i) || f->alloc[i] <= 0)
			continue;
		step = fmin(step, f->left[i] / f->alloc[i]);
		if (f->alloc[i] > f->rate[i] && f->tokens[i] > 0)
			step = fmin(step, (f->tokens[i] - (1.0 - TOKEN_EPS) + TOKEN_EPS) /
			                      (f->alloc[i] - f->rate[i]));
	}
	if (f->global_tokens >= 1.0 - TOKEN_EPS && sum > f->global_rate)
		step = fmin(step, (f->global_tokens - (1.0 - TOKEN_EPS) + TOKEN_EPS) /
		                      (sum - f->global_rate));
	return step;
}

static void fluid_advance(struct fluid *f, double step, double sum)
{
	f->now += step;
	for (size_t i = 0; i < f->n; i++) {
		if (!working(f, i))
			continue;
		f->left[i] -= f->alloc[i] * step;
		f->tokens[i] = fmin(f->burst[i], fmax(0, f->tokens[i] + (f->rate[i] - f->alloc[i]) * step));
		if (!working(f, i)) {
			f->left[i] = 0;
			f->t[i].eta_s = f->now;
		}
	}
	f->global_tokens = fmin(f->global_burst,
	                        fmax(0, f->global_tokens + (f->global_rate - sum) * step));
}

/* Runs the model to its end; the time the last work may leave. */
static double fluid_run(struct fluid *f)
{
	/* Each tenant finishes once and runs out of saved tokens about once: a few events each. */
	for (size_t guard = 0; guard < 64 * f->n + 64; guard++) {
		fluid_burst(f);
		double sum;
		fluid_rates(f, &sum);
		bool any = false;
		for (size_t i = 0; i < f->n; i++)
			any = any || working(f, i);
		if (!any)
			return f->now;
		double step = fluid_step(f, sum);
		if (isinf(step))
			break;
		fluid_advance(f, step, sum);
	}
	for (size_t i = 0; i < f->n; i++)
		if (working(f, i))
			f->t[i].eta_s = INFINITY;
	return INFINITY;
}

bool eta_compute(struct eta_tenant *t, size_t n, double global_rate, double global_tokens,
               double window_s, double *total_s)
{
	if (!eta_input_ok(t, n, global_rate, global_tokens, window_s))
		return false;
	*total_s = 0;
	if (n == 0)
		return true;
	double *scratch = calloc(6 * n, sizeof *scratch);
	if (!scratch)
		return false;
	struct fluid f = {.n = n, .t = t, .left = scratch, .tokens = scratch + n,
	                  .burst = scratch + 2 * n, .rate = scratch + 3 * n, .cap = scratch + 4 * n,
	                  .alloc = scratch + 5 * n, .global_tokens = global_tokens,
	                  .global_burst = eta_full_bucket(global_rate),
	                  .global_rate = global_rate / window_s};
	for (size_t i = 0; i < n; i++) {
		f.left[i] = t[i].events;
		f.tokens[i] = t[i].tokens;
		f.burst[i] = fmax(t[i].tokens, eta_full_bucket(t[i].rate));
		f.rate[i] = t[i].rate / window_s;
		t[i].eta_s = t[i].events > TOKEN_EPS ? -1 : 0;
	}
	*total_s = fluid_run(&f);
	free(scratch);
	return true;
}
