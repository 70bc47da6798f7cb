/*
 * promtext.h - a reader of the Prometheus text exposition format (0.0.4), for
 * `chatprovctl status`: it reads whatever answers at the configured metrics address, so it
 * treats the text as outside input (bounded, fuzzed: tests/fuzz/fuzz_promtext.c).
 *
 * Comments (# HELP, # TYPE) are skipped; each sample line is name{label="value",...} value
 * [timestamp]. Label values are unescaped (\\, \", \n). A malformed line fails the parse
 * with its line number.
 */
#ifndef CHATPROV_PROMTEXT_H
#define CHATPROV_PROMTEXT_H

#include "common.h"

#define PROMTEXT_MAX_BYTES   (16u << 20)
#define PROMTEXT_MAX_SAMPLES 200000
#define PROMTEXT_MAX_LABELS  16
#define PROMTEXT_MAX_VALUE   4096 /* bytes of one label value */

struct promtext;

bool promtext_parse(const char *text, size_t len, struct promtext **out, char *err,
                    size_t errcap) CP_MUSTCHECK;
void promtext_free(struct promtext *pt);

size_t promtext_count(const struct promtext *pt);
const char *promtext_name(const struct promtext *pt, size_t i);
double promtext_value(const struct promtext *pt, size_t i);
/* The value of label key on sample i; NULL when the sample has no such label. */
const char *promtext_label(const struct promtext *pt, size_t i, const char *key);

/*
 * The sum of the samples called name whose label `label` equals value (label NULL: every
 * sample of that name; value "": samples without that label or with it empty, as
 * Prometheus reads them). False when no sample matched.
 */
bool promtext_sum(const struct promtext *pt, const char *name, const char *label,
                  const char *value, double *out) CP_MUSTCHECK;

#endif
