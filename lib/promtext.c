/* promtext.c - Prometheus text format reader: samples with their labels. */
#include "promtext.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sample {
	char *name;
	size_t n_labels;
	char *keys[PROMTEXT_MAX_LABELS], *values[PROMTEXT_MAX_LABELS];
	double value;
};

struct promtext {
	struct sample *v;
	size_t n, cap;
};

/* A cursor over one line. */
struct cursor {
	const char *p, *end;
};

static void sample_clear(struct sample *s)
{
	free(s->name);
	for (size_t i = 0; i < s->n_labels; i++) {
		free(s->keys[i]);
		free(s->values[i]);
	}
	*s = (struct sample){0};
}

void promtext_free(struct promtext *pt)
{
	if (!pt)
		return;
	for (size_t i = 0; i < pt->n; i++)
		sample_clear(&pt->v[i]);
	free(pt->v);
	free(pt);
}

static void skip_blanks(struct cursor *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
		c->p++;
}

static bool name_char(char ch, bool first, bool metric)
{
	if (isalpha((unsigned char)ch) || ch == '_' || (metric && ch == ':'))
		return true;
	return !first && isdigit((unsigned char)ch);
}

/* A metric name (metric) or a label name; NULL when there is none or out of memory. */
static char *read_name(struct cursor *c, bool metric)
{
	const char *start = c->p;
	while (c->p < c->end && name_char(*c->p, c->p == start, metric))
		c->p++;
	return c->p > start ? strndup(start, (size_t)(c->p - start)) : NULL;
}

/* A quoted label value with \\, \" and \n escapes; the cursor is on the opening quote. */
static char *read_quoted(struct cursor *c)
{
	if (c->p >= c->end || *c->p != '"')
		return NULL;
	c->p++;
	size_t room = (size_t)(c->end - c->p);
	room = room < PROMTEXT_MAX_VALUE ? room : PROMTEXT_MAX_VALUE;
	char *out = malloc(room + 1);
	size_t n = 0;
	if (!out)
		return NULL;
	while (c->p < c->end && *c->p != '"' && n < room) {
		char ch = *c->p++;
		if (ch == '\\') {
			ch = c->p < c->end ? *c->p++ : '\0';
			if (ch == 'n')
				ch = '\n';
			else if (ch != '\\' && ch != '"')
				goto fail; /* not one of the three escapes */
		}
		out[n++] = ch;
	}
	if (c->p < c->end && *c->p == '"') {
		c->p++;
		out[n] = '\0';
		return out;
	}
fail:
	free(out);
	return NULL;
}

static bool read_labels(struct cursor *c, struct sample *s)
{
	c->p++; /* '{' */
	for (;;) {
		skip_blanks(c);
		if (c->p < c->end && *c->p == '}') {
			c->p++;
			return true;
		}
		if (s->n_labels == PROMTEXT_MAX_LABELS)
			return false;
		char *key = read_name(c, false);
		skip_blanks(c);
		if (!key || c->p >= c->end || *c->p != '=') {
			free(key);
			return false;
		}
		c->p++;
		skip_blanks(c);
		char *value = read_quoted(c);
		if (!value) {
			free(key);
			return false;
		}
		s->keys[s->n_labels] = key;
		s->values[s->n_labels++] = value;
		skip_blanks(c);
		if (c->p < c->end && *c->p == ',')
			c->p++;
		else if (c->p >= c->end || *c->p != '}')
			return false;
	}
}

/* The sample value: a float, +Inf, -Inf or NaN; then an optional integer timestamp. */
static bool read_value(struct cursor *c, double *out)
{
	char buf[64];
	skip_blanks(c);
	const char *start = c->p;
	while (c->p < c->end && *c->p != ' ' && *c->p != '\t')
		c->p++;
	size_t n = (size_t)(c->p - start);
	if (n == 0 || n >= sizeof buf)
		return false;
	memcpy(buf, start, n);
	buf[n] = '\0';
	char *tail;
	errno = 0;
	*out = strtod(buf, &tail);
	if (*tail != '\0' || (errno == ERANGE && !isinf(*out)))
		return false;
	skip_blanks(c);
	if (c->p == c->end)
		return true;
	start = c->p;
	if (c->p < c->end && *c->p == '-')
		c->p++;
	while (c->p < c->end && isdigit((unsigned char)*c->p))
		c->p++;
	bool had_digits = c->p > start && !(c->p - start == 1 && *start == '-');
	skip_blanks(c);
	return had_digits && c->p == c->end;
}

static bool parse_line(struct cursor *c, struct sample *s)
{
	s->name = read_name(c, true);
	if (!s->name)
		return false;
	skip_blanks(c);
	if (c->p < c->end && *c->p == '{' && !read_labels(c, s))
		return false;
	return read_value(c, &s->value);
}

static bool append(struct promtext *pt, struct sample *s)
{
	if (pt->n == pt->cap) {
		size_t cap = pt->cap ? pt->cap * 2 : 64;
		struct sample *v = realloc(pt->v, cap * sizeof *v);
		if (!v)
			return false;
		pt->v = v;
		pt->cap = cap;
	}
	pt->v[pt->n++] = *s;
	return true;
}

/* One line; blank and comment lines are skipped. */
static bool take_line(struct promtext *pt, const char *line, size_t len, char *err,
                      size_t errcap, size_t line_no)
{
	if (len > 0 && line[len - 1] == '\r')
		len--; /* CRLF line ends */
	struct cursor c = {line, line + len};
	skip_blanks(&c);
	if (c.p == c.end || *c.p == '#')
		return true;
	if (pt->n == PROMTEXT_MAX_SAMPLES) {
		snprintf(err, errcap, "line %zu: more than %d samples", line_no,
		         PROMTEXT_MAX_SAMPLES);
		return false;
	}
	struct sample s = {0};
	if (!parse_line(&c, &s) || !append(pt, &s)) {
		sample_clear(&s);
		snprintf(err, errcap, "line %zu: not a Prometheus sample", line_no);
		return false;
	}
	return true;
}

bool promtext_parse(const char *text, size_t len, struct promtext **out, char *err,
                    size_t errcap)
{
	if (len > PROMTEXT_MAX_BYTES) {
		snprintf(err, errcap, "more than %u bytes", PROMTEXT_MAX_BYTES);
		return false;
	}
	struct promtext *pt = calloc(1, sizeof *pt);
	if (!pt) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	size_t line_no = 0;
	for (const char *p = text, *end = text + len; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		if (!take_line(pt, p, n, err, errcap, ++line_no)) {
			promtext_free(pt);
			return false;
		}
		p += n + 1;
	}
	*out = pt;
	return true;
}

size_t promtext_count(const struct promtext *pt)
{
	return pt->n;
}

const char *promtext_name(const struct promtext *pt, size_t i)
{
	return i < pt->n ? pt->v[i].name : NULL;
}

double promtext_value(const struct promtext *pt, size_t i)
{
	return i < pt->n ? pt->v[i].value : NAN;
}

const char *promtext_label(const struct promtext *pt, size_t i, const char *key)
{
	if (i >= pt->n)
		return NULL;
	for (size_t k = 0; k < pt->v[i].n_labels; k++)
		if (strcmp(pt->v[i].keys[k], key) == 0)
			return pt->v[i].values[k];
	return NULL;
}

bool promtext_sum(const struct promtext *pt, const char *name, const char *label,
                  const char *value, double *out)
{
	bool found = false;
	*out = 0;
	for (size_t i = 0; i < pt->n; i++) {
		if (strcmp(pt->v[i].name, name) != 0)
			continue;
		if (label) {
			const char *v = promtext_label(pt, i, label);
			if (strcmp(v ? v : "", value) != 0)
				continue;
		}
		*out += pt->v[i].value;
		found = true;
	}
	return found;
}
