/*
 * metrics.c - Prometheus registry: families, series (atomics on the hot path) and the text
 * format. The HTTP endpoint that serves it is metrics_http.c; metrics_int.h what they share.
 */
#include "metrics.h"

#include <assert.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dynbuf.h"
#include "metrics_int.h"

/* A scrape larger than this is refused rather than exhausting memory. */
#define RENDER_MAX (256u * 1024 * 1024)

struct metrics_series {
	struct metrics_family *fam;
	struct metrics_series *next;      /* family's series in creation order */
	struct metrics_series *hash_next; /* chain in the registry's hash table */
	uint64_t hash;
	const char *values[METRICS_MAX_LABELS]; /* point into the same allocation */
	atomic_uint_fast64_t count;             /* counter total */
	atomic_uint_fast64_t bits;              /* gauge value / histogram sum, as double bits */
	atomic_bool present;                    /* gauges: exported unless unset */
	atomic_uint_fast64_t buckets[]; /* histograms: n_buckets + 1 (+Inf), not cumulative */
};

struct metrics_family {
	struct metrics *m;
	struct metrics_family *next;
	char *name;
	char *help;
	enum metrics_type type;
	size_t n_labels;
	char *labels[METRICS_MAX_LABELS];
	size_t n_buckets;
	double buckets[METRICS_MAX_BUCKETS];
	struct metrics_series *head, *tail;
	struct metrics_series *sink; /* absorbs updates past the series bound; never exported */
};

static uint64_t dbl_bits(double v)
{
	uint64_t u;
	memcpy(&u, &v, sizeof(u));
	return u;
}

static double bits_dbl(uint64_t u)
{
	double v;
	memcpy(&v, &u, sizeof(v));
	return v;
}

static void atomic_add_double(atomic_uint_fast64_t *a, double delta)
{
	uint_fast64_t old = atomic_load_explicit(a, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(a, &old, dbl_bits(bits_dbl(old) + delta),
	                                              memory_order_relaxed, memory_order_relaxed))
		;
}

/* ---- names and validation ---- */

static bool valid_name(const char *s, bool allow_colon)
{
	if (!s || !*s)
		return false;
	for (const char *p = s; *p; p++) {
		bool alpha = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || *p == '_' ||
		             (allow_colon && *p == ':');
		if (!alpha && !(p > s && *p >= '0' && *p <= '9'))
			return false;
	}
	return true;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool check_labels(const struct metrics_spec *spec, size_t *n, char *err, size_t errcap)
{
	*n = 0;
	for (const char *const *l = spec->labels; l && *l; l++) {
		if (*n == METRICS_MAX_LABELS) {
			snprintf(err, errcap, "%s: more than %d labels", spec->name,
			         METRICS_MAX_LABELS);
			return false;
		}
		if (!valid_name(*l, false) || strncmp(*l, "__", 2) == 0 ||
		    (spec->type == METRICS_HISTOGRAM && strcmp(*l, "le") == 0)) {
			snprintf(err, errcap, "%s: invalid label name \"%s\"", spec->name, *l);
			return false;
		}
		for (size_t i = 0; i < *n; i++) {
			if (strcmp(spec->labels[i], *l) == 0) {
				snprintf(err, errcap, "%s: duplicate label \"%s\"", spec->name, *l);
				return false;
			}
		}
		(*n)++;
	}
	return true;
}

static bool check_buckets(const struct metrics_spec *spec, char *err, size_t errcap)
{
	if (spec->type != METRICS_HISTOGRAM)
		return true;
	if (spec->n_buckets == 0 || spec->n_buckets > METRICS_MAX_BUCKETS || !spec->buckets) {
		snprintf(err, errcap, "%s: a histogram needs 1..%d buckets", spec->name,
		         METRICS_MAX_BUCKETS);
		return false;
	}
	for (size_t i = 0; i < spec->n_buckets; i++) {
		if (!isfinite(spec->buckets[i]) ||
		    (i > 0 && spec->buckets[i] <= spec->buckets[i - 1])) {
			snprintf(err, errcap, "%s: buckets must be finite and strictly increasing",
			         spec->name);
			return false;
		}
	}
	return true;
}

static bool check_spec(const struct metrics_spec *spec, size_t *n_labels, char *err, size_t errcap)
{
	if (!valid_name(spec->name, true)) {
		snprintf(err, errcap, "invalid metric name \"%s\"",
		         spec->name ? spec->name : "(null)");
		return false;
	}
	if (spec->type == METRICS_COUNTER && !ends_with(spec->name, "_total")) {
		snprintf(err, errcap, "%s: counter names end in _total", spec->name);
		return false;
	}
	if (spec->type == METRICS_HISTOGRAM &&
	    (ends_with(spec->name, "_bucket") || ends_with(spec->name, "_sum") ||
	     ends_with(spec->name, "_count") || ends_with(spec->name, "_total"))) {
		snprintf(err, errcap, "%s: reserved suffix for a histogram", spec->name);
		return false;
	}
	if (spec->type != METRICS_COUNTER && spec->type != METRICS_GAUGE &&
	    spec->type != METRICS_HISTOGRAM) {
		snprintf(err, errcap, "%s: unknown metric type", spec->name);
		return false;
	}
	return check_labels(spec, n_labels, err, errcap) && check_buckets(spec, err, errcap);
}

/* ---- series ---- */

static uint64_t series_hash(const struct metrics_family *fam, const char *const *values)
{
	uint64_t h = 1469598103934665603ull;
	uintptr_t fp = (uintptr_t)fam;
	for (size_t i = 0; i < sizeof(fp); i++) {
		h ^= (fp >> (8 * i)) & 0xff;
		h *= 1099511628211ull;
	}
	for (size_t i = 0; i < fam->n_labels; i++) {
		/* The NUL terminator is hashed too, so ("ab","c") and ("a","bc") differ. */
		const char *v = values[i] ? values[i] : "";
		do {
			h ^= (unsigned char)*v;
			h *= 1099511628211ull;
		} while (*v++);
	}
	return h;
}

static bool series_matches(const struct metrics_series *s, const struct metrics_family *fam,
                           uint64_t hash, const char *const *values)
{
	if (s->fam != fam || s->hash != hash)
		return false;
	for (size_t i = 0; i < fam->n_labels; i++) {
		if (strcmp(s->values[i], values[i] ? values[i] : "") != 0)
			return false;
	}
	return true;
}

/* One allocation: the struct, the histogram buckets, then the label value strings. */
static struct metrics_series *series_alloc(struct metrics_family *fam, const char *const *values)
{
	size_t nb = fam->type == METRICS_HISTOGRAM ? fam->n_buckets + 1 : 0;
	size_t head = sizeof(struct metrics_series) + nb * sizeof(atomic_uint_fast64_t);
	size_t total = head;
	for (size_t i = 0; i < fam->n_labels; i++)
		total += strlen(values && values[i] ? values[i] : "") + 1;
	struct metrics_series *s = calloc(1, total);
	if (!s)
		return NULL;
	s->fam = fam;
	char *p = (char *)s + head;
	for (size_t i = 0; i < fam->n_labels; i++) {
		const char *v = values && values[i] ? values[i] : "";
		size_t len = strlen(v) + 1;
		memcpy(p, v, len);
		s->values[i] = p;
		p += len;
	}
	atomic_init(&s->count, 0);
	atomic_init(&s->bits, dbl_bits(0.0));
	atomic_init(&s->present, true);
	for (size_t i = 0; i < nb; i++)
		atomic_init(&s->buckets[i], 0);
	return s;
}

static struct metrics_series *series_find(struct metrics *m, struct metrics_family *fam,
                                          uint64_t hash, const char *const *values)
{
	for (struct metrics_series *s = m->table[hash & (HASH_SIZE - 1)]; s; s = s->hash_next) {
		if (series_matches(s, fam, hash, values))
			return s;
	}
	return NULL;
}

/* Called with the write lock held. */
static struct metrics_series *series_create(struct metrics *m, struct metrics_family *fam,
                                            uint64_t hash, const char *const *values)
{
	if (m->n_series >= m->max_series)
		goto fail;
	struct metrics_series *s = series_alloc(fam, values);
	if (!s)
		goto fail;
	s->hash = hash;
	s->hash_next = m->table[hash & (HASH_SIZE - 1)];
	m->table[hash & (HASH_SIZE - 1)] = s;
	if (fam->tail)
		fam->tail->next = s;
	else
		fam->head = s;
	fam->tail = s;
	m->n_series++;
	return s;
fail:
	if (m->dropped)
		metrics_inc(m->dropped);
	return fam->sink;
}

struct metrics_series *metrics_series(struct metrics_family *fam, const char *const *values)
{
	struct metrics *m = fam->m;
	uint64_t hash = series_hash(fam, values);
	pthread_rwlock_rdlock(&m->lock);
	struct metrics_series *s = series_find(m, fam, hash, values);
	pthread_rwlock_unlock(&m->lock);
	if (s)
		return s;
	pthread_rwlock_wrlock(&m->lock);
	/* Another thread may have created it between the two locks. */
	s = series_find(m, fam, hash, values);
	if (!s)
		s = series_create(m, fam, hash, values);
	pthread_rwlock_unlock(&m->lock);
	return s;
}

/* ---- updates (hot path: no locks) ---- */

void metrics_inc(struct metrics_series *s)
{
	metrics_add(s, 1);
}

void metrics_add(struct metrics_series *s, uint64_t n)
{
	assert(s->fam->type == METRICS_COUNTER);
	if (s->fam->type == METRICS_COUNTER)
		atomic_fetch_add_explicit(&s->count, n, memory_order_relaxed);
}

void metrics_gauge_set(struct metrics_series *s, double v)
{
	assert(s->fam->type == METRICS_GAUGE);
	if (s->fam->type != METRICS_GAUGE)
		return;
	atomic_store_explicit(&s->bits, dbl_bits(v), memory_order_relaxed);
	atomic_store_explicit(&s->present, true, memory_order_relaxed);
}

void metrics_gauge_add(struct metrics_series *s, double delta)
{
	assert(s->fam->type == METRICS_GAUGE);
	if (s->fam->type != METRICS_GAUGE)
		return;
	atomic_add_double(&s->bits, delta);
	atomic_store_explicit(&s->present, true, memory_order_relaxed);
}

void metrics_gauge_unset(struct metrics_series *s)
{
	assert(s->fam->type == METRICS_GAUGE);
	atomic_store_explicit(&s->present, false, memory_order_relaxed);
}

void metrics_observe(struct metrics_series *s, double v)
{
	const struct metrics_family *fam = s->fam;
	assert(fam->type == METRICS_HISTOGRAM);
	if (fam->type != METRICS_HISTOGRAM || isnan(v))
		return;
	size_t i = 0;
	while (i < fam->n_buckets && v > fam->buckets[i])
		i++;
	atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
	atomic_add_double(&s->bits, v);
}

uint64_t metrics_counter_value(const struct metrics_series *s)
{
	return atomic_load_explicit(&((struct metrics_series *)s)->count, memory_order_relaxed);
}

double metrics_gauge_value(const struct metrics_series *s)
{
	return bits_dbl(
	    atomic_load_explicit(&((struct metrics_series *)s)->bits, memory_order_relaxed));
}

/* ---- registry ---- */

static void family_free(struct metrics_family *fam)
{
	for (struct metrics_series *s = fam->head, *next; s; s = next) {
		next = s->next;
		free(s);
	}
	free(fam->sink);
	for (size_t i = 0; i < fam->n_labels; i++)
		free(fam->labels[i]);
	free(fam->name);
	free(fam->help);
	free(fam);
}

static struct metrics_family *family_new(struct metrics *m, const struct metrics_spec *spec,
                                         size_t n_labels)
{
	struct metrics_family *fam = calloc(1, sizeof(*fam));
	if (!fam)
		return NULL;
	fam->m = m;
	fam->type = spec->type;
	fam->name = strdup(spec->name);
	fam->help = strdup(spec->help ? spec->help : "");
	if (!fam->name || !fam->help)
		goto fail;
	for (size_t i = 0; i < n_labels; i++) {
		fam->labels[i] = strdup(spec->labels[i]);
		if (!fam->labels[i])
			goto fail;
		fam->n_labels = i + 1;
	}
	if (spec->type == METRICS_HISTOGRAM) {
		fam->n_buckets = spec->n_buckets;
		memcpy(fam->buckets, spec->buckets, spec->n_buckets * sizeof(double));
	}
	fam->sink = series_alloc(fam, NULL);
	if (!fam->sink)
		goto fail;
	return fam;
fail:
	family_free(fam);
	return NULL;
}

static struct metrics_family *family_by_name(struct metrics *m, const char *name)
{
	for (struct metrics_family *f = m->families; f; f = f->next) {
		if (strcmp(f->name, name) == 0)
			return f;
	}
	return NULL;
}

bool metrics_register(struct metrics *m, const struct metrics_spec *spec,
                      struct metrics_family **out, char *err, size_t errcap)
{
	size_t n_labels;
	if (!check_spec(spec, &n_labels, err, errcap))
		return false;
	pthread_rwlock_wrlock(&m->lock);
	struct metrics_family *fam = NULL;
	if (family_by_name(m, spec->name)) {
		snprintf(err, errcap, "%s: registered twice", spec->name);
		goto fail;
	}
	fam = family_new(m, spec, n_labels);
	if (!fam) {
		snprintf(err, errcap, "%s: out of memory", spec->name);
		goto fail;
	}
	if (m->families_tail)
		m->families_tail->next = fam;
	else
		m->families = fam;
	m->families_tail = fam;
	pthread_rwlock_unlock(&m->lock);
	*out = fam;
	return true;
fail:
	pthread_rwlock_unlock(&m->lock);
	return false;
}

bool metrics_new(size_t max_series, struct metrics **out, char *err, size_t errcap)
{
	struct metrics *m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errcap, "metrics: out of memory");
		return false;
	}
	m->max_series = max_series ? max_series : METRICS_DEFAULT_MAX_SERIES;
	snprintf(m->reason, sizeof(m->reason), "starting");
	pthread_rwlock_init(&m->lock, NULL);
	pthread_mutex_init(&m->state_lock, NULL);
	pthread_mutex_init(&m->scrape_lock, NULL);
	struct metrics_family *fam;
	const struct metrics_spec dropped = {
	    .name = "chatprov_metrics_series_dropped_total",
	    .help = "Label combinations refused because the series limit was reached.",
	    .type = METRICS_COUNTER,
	};
	if (!metrics_register(m, &dropped, &fam, err, errcap))
		goto fail;
	/* The registry's own series does not count against the bound. */
	m->max_series++;
	m->dropped = metrics_series(fam, NULL);
	*out = m;
	return true;
fail:
	metrics_free(m);
	return false;
}

void metrics_free(struct metrics *m)
{
	if (!m)
		return;
	metrics_stop(m);
	for (struct metrics_family *f = m->families, *next; f; f = next) {
		next = f->next;
		family_free(f);
	}
	pthread_rwlock_destroy(&m->lock);
	pthread_mutex_destroy(&m->state_lock);
	pthread_mutex_destroy(&m->scrape_lock);
	free(m);
}

void metrics_set_collect_cb(struct metrics *m, metrics_collect_fn fn, void *arg)
{
	/* The scrape lock first (the scrape's order): a scrape running the old callback ends
	 * before the new one is set, so the caller may free what the old one used. */
	pthread_mutex_lock(&m->scrape_lock);
	pthread_mutex_lock(&m->state_lock);
	m->collect_fn = fn;
	m->collect_arg = arg;
	pthread_mutex_unlock(&m->state_lock);
	pthread_mutex_unlock(&m->scrape_lock);
}

void metrics_set_ready(struct metrics *m, bool ready, const char *reason)
{
	pthread_mutex_lock(&m->state_lock);
	m->ready = ready;
	snprintf(m->reason, sizeof(m->reason), "%s", reason ? reason : "");
	pthread_mutex_unlock(&m->state_lock);
}

/* ---- text format ---- */

/* Label values escape \, " and newline; HELP text escapes \ and newline only. */
static void put_escaped(struct dynbuf *b, const char *s, bool quote)
{
	for (const char *p = s; *p; p++) {
		if (*p == '\\')
			dynbuf_add(b, "\\\\", 2);
		else if (*p == '\n')
			dynbuf_add(b, "\\n", 2);
		else if (*p == '"' && quote)
			dynbuf_add(b, "\\\"", 2);
		else
			dynbuf_add(b, p, 1);
	}
}

/* Shortest decimal that reads back as the same double; Prometheus spellings for the rest. */
static void fmt_double(double v, char *buf, size_t cap)
{
	if (isnan(v)) {
		snprintf(buf, cap, "NaN");
		return;
	}
	if (isinf(v)) {
		snprintf(buf, cap, "%s", v > 0 ? "+Inf" : "-Inf");
		return;
	}
	/* Whole numbers in full ("500000", not "5e+05"): counts are easier to read. */
	if (v == trunc(v) && fabs(v) < 1e15) {
		snprintf(buf, cap, "%.0f", v);
		return;
	}
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, cap, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

/* name{l1="v1",...[,le="x"]} — the label set of one sample line. */
static void put_labels(struct dynbuf *b, const struct metrics_series *s, const char *le)
{
	const struct metrics_family *fam = s->fam;
	if (fam->n_labels == 0 && !le)
		return;
	dynbuf_adds(b, "{");
	for (size_t i = 0; i < fam->n_labels; i++) {
		if (i > 0)
			dynbuf_adds(b, ",");
		dynbuf_adds(b, fam->labels[i]);
		dynbuf_adds(b, "=\"");
		put_escaped(b, s->values[i], true);
		dynbuf_adds(b, "\"");
	}
	if (le) {
		dynbuf_adds(b, fam->n_labels ? ",le=\"" : "le=\"");
		dynbuf_adds(b, le);
		dynbuf_adds(b, "\"");
	}
	dynbuf_adds(b, "}");
}

static void put_sample(struct dynbuf *b, const struct metrics_series *s, const char *suffix,
                       const char *le, const char *value)
{
	dynbuf_adds(b, s->fam->name);
	dynbuf_adds(b, suffix);
	put_labels(b, s, le);
	dynbuf_adds(b, " ");
	dynbuf_adds(b, value);
	dynbuf_adds(b, "\n");
}

static void render_histogram(struct dynbuf *b, struct metrics_series *s)
{
	const struct metrics_family *fam = s->fam;
	char le[32], val[32];
	uint64_t cum = 0;
	for (size_t i = 0; i <= fam->n_buckets; i++) {
		cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
		if (i < fam->n_buckets)
			fmt_double(fam->buckets[i], le, sizeof(le));
		else
			snprintf(le, sizeof(le), "+Inf");
		snprintf(val, sizeof(val), "%" PRIu64, cum);
		put_sample(b, s, "_bucket", le, val);
	}
	fmt_double(bits_dbl(atomic_load_explicit(&s->bits, memory_order_relaxed)), val,
	           sizeof(val));
	put_sample(b, s, "_sum", NULL, val);
	/* _count is the +Inf bucket, so the two always agree within one scrape. */
	snprintf(val, sizeof(val), "%" PRIu64, cum);
	put_sample(b, s, "_count", NULL, val);
}

static void render_series(struct dynbuf *b, struct metrics_series *s)
{
	char val[32];
	switch (s->fam->type) {
	case METRICS_COUNTER:
		snprintf(val, sizeof(val), "%" PRIu64,
		         (uint64_t)atomic_load_explicit(&s->count, memory_order_relaxed));
		put_sample(b, s, "", NULL, val);
		break;
	case METRICS_GAUGE:
		if (!atomic_load_explicit(&s->present, memory_order_relaxed))
			break;
		fmt_double(metrics_gauge_value(s), val, sizeof(val));
		put_sample(b, s, "", NULL, val);
		break;
	case METRICS_HISTOGRAM:
		render_histogram(b, s);
		break;
	}
}

static const char *type_name(enum metrics_type t)
{
	return t == METRICS_COUNTER ? "counter" : t == METRICS_GAUGE ? "gauge" : "histogram";
}

bool metrics_render(struct metrics *m, char **out, size_t *len)
{
	struct dynbuf b;
	dynbuf_init(&b, RENDER_MAX - 1);
	pthread_rwlock_rdlock(&m->lock);
	for (struct metrics_family *f = m->families; f && dynbuf_ok(&b); f = f->next) {
		dynbuf_adds(&b, "# HELP ");
		dynbuf_adds(&b, f->name);
		dynbuf_adds(&b, " ");
		put_escaped(&b, f->help, false);
		dynbuf_adds(&b, "\n# TYPE ");
		dynbuf_adds(&b, f->name);
		dynbuf_adds(&b, " ");
		dynbuf_adds(&b, type_name(f->type));
		dynbuf_adds(&b, "\n");
		for (struct metrics_series *s = f->head; s; s = s->next)
			render_series(&b, s);
	}
	pthread_rwlock_unlock(&m->lock);
	*out = dynbuf_take(&b, len);
	dynbuf_free(&b);
	return *out != NULL;
}
