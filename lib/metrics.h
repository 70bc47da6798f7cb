/*
 * metrics.h - a Prometheus registry and its HTTP endpoint (/metrics, /healthz, /readyz).
 *
 * A metric family is registered once (name, help, type, label names, histogram buckets).
 * A series is one combination of label values; metrics_series() finds or creates it and
 * returns a handle that stays valid until metrics_free(). Updating through a handle is a
 * lock-free atomic operation, so workers keep handles and update them on the hot path;
 * only registration, first lookup of a series and scraping take the registry lock.
 *
 * The number of series is bounded. Past the bound metrics_series() returns a sink handle
 * that accepts updates and is never exported, and counts the refusal in
 * chatprov_metrics_series_dropped_total: a label with unbounded values cannot exhaust memory.
 *
 * The module knows no secrets: it only exports what callers put into it.
 */
#ifndef CHATPROV_METRICS_H
#define CHATPROV_METRICS_H

#include "common.h"

#define METRICS_DEFAULT_MAX_SERIES 10000
#define METRICS_MAX_LABELS         8
#define METRICS_MAX_BUCKETS        32
#define METRICS_REASON_MAX         256

enum metrics_type { METRICS_COUNTER, METRICS_GAUGE, METRICS_HISTOGRAM };

struct metrics;
struct metrics_family;
struct metrics_series;

/* What metrics_register() needs. Counter names must end in "_total". */
struct metrics_spec {
	const char *name;
	const char *help;
	enum metrics_type type;
	const char *const *labels; /* NULL-terminated label names; NULL for none */
	const double *buckets;     /* histograms: strictly increasing upper bounds, no +Inf */
	size_t n_buckets;
};

/* Label values in place: metrics_series(fam, METRICS_LABELS("contoso", "201")). */
#define METRICS_LABELS(...) ((const char *const[]){__VA_ARGS__})

/* max_series = 0 means METRICS_DEFAULT_MAX_SERIES. */
bool metrics_new(size_t max_series, struct metrics **out, char *err, size_t errcap) CP_MUSTCHECK;
/* Stops the HTTP endpoint (if any) and frees every family and series. */
void metrics_free(struct metrics *m);
/*
 * Stops the HTTP endpoint and waits for the requests being served (libmicrohttpd joins its
 * thread): no handler or collect callback runs once it returns. The registry stays usable.
 */
void metrics_stop(struct metrics *m);

/* Validates the spec; the strings are copied. Names must be unique in the registry. */
bool metrics_register(struct metrics *m, const struct metrics_spec *spec,
                      struct metrics_family **out, char *err, size_t errcap) CP_MUSTCHECK;

/*
 * The series with these label values (as many as the family has labels; NULL is
 * treated as ""), created on first use. Never NULL: past the series bound, or if memory
 * runs out, the family's sink is returned.
 */
struct metrics_series *metrics_series(struct metrics_family *fam, const char *const *values);

/* Counters: monotonically increasing. */
void metrics_inc(struct metrics_series *s);
void metrics_add(struct metrics_series *s, uint64_t n);
/* Gauges. metrics_gauge_unset() hides the series until its next set/add (e.g. a revoked
 * partition's lag). */
void metrics_gauge_set(struct metrics_series *s, double v);
void metrics_gauge_add(struct metrics_series *s, double delta);
void metrics_gauge_unset(struct metrics_series *s);
/* Histograms: v is counted in the first bucket whose upper bound is >= v. */
void metrics_observe(struct metrics_series *s, double v);

/* Read-backs for tests and STATUS= lines: a counter's total, a gauge's value. */
uint64_t metrics_counter_value(const struct metrics_series *s);
double metrics_gauge_value(const struct metrics_series *s);

/*
 * Called at the start of every scrape, on the HTTP thread, without the registry lock held:
 * the callback may update gauges and look up series. Pass fn = NULL to remove it. Waits for
 * a scrape that is running the previous callback, so on return that callback is done.
 */
typedef void (*metrics_collect_fn)(struct metrics *m, void *arg);
void metrics_set_collect_cb(struct metrics *m, metrics_collect_fn fn, void *arg);

/*
 * Writes the registry in the Prometheus text format 0.0.4 into a malloc'ed, NUL-terminated
 * buffer (the collect callback is not called). The caller frees *out.
 */
bool metrics_render(struct metrics *m, char **out, size_t *len) CP_MUSTCHECK;

/*
 * Serves /metrics, /healthz and /readyz on "host:port" ("[v6addr]:port" for IPv6,
 * port 0 = an ephemeral port). An empty string serves nothing and succeeds.
 */
bool metrics_listen(struct metrics *m, const char *listen, char *err,
                    size_t errcap) CP_MUSTCHECK;
/* The bound TCP port, 0 when not listening. */
uint16_t metrics_port(const struct metrics *m);

/* /readyz answers 200 "ready" or 503 with the reason (copied, truncated to
 * METRICS_REASON_MAX). Not ready ("starting") until the first call. */
void metrics_set_ready(struct metrics *m, bool ready, const char *reason);

#endif
