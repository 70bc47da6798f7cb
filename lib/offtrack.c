/* offtrack.c - per-partition rings of begun offsets; committable = contiguous done prefix + 1. */
#include "offtrack.h"

#include <stdlib.h>
#include <string.h>

#define RING_MIN 16
/* Rings above this size shrink when mostly empty, so one burst does not pin memory. */
#define RING_SHRINK_ABOVE 1024

struct ot_entry {
	int64_t offset;
	bool done;
};

/* One partition: entries [head, head + count) of a power-of-two ring, offsets increasing. */
struct ot_part {
	struct ot_entry *ring;
	size_t cap, head, count;
	size_t in_flight;    /* entries not done */
	int64_t last_begun;  /* -1: none yet */
	int64_t next_commit; /* highest contiguous done + 1; -1: nothing done yet */
	int64_t reported;    /* last value offtrack_committable returned; -1: none */
};

struct offtrack {
	struct ot_part **parts; /* indexed by partition number; NULL: not tracked */
	size_t n_parts;
	size_t max_tracked, tracked_total, in_flight_total;
};

bool offtrack_new(size_t max_tracked, struct offtrack **out)
{
	struct offtrack *t = calloc(1, sizeof(*t));
	if (!t)
		return false;
	t->max_tracked = max_tracked;
	*out = t;
	return true;
}

static void part_free(struct ot_part *p)
{
	if (p) {
		free(p->ring);
		free(p);
	}
}

void offtrack_free(struct offtrack *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_parts; i++)
		part_free(t->parts[i]);
	free(t->parts);
	free(t);
}

static struct ot_entry *entry_at(const struct ot_part *p, size_t i)
{
	return &p->ring[(p->head + i) & (p->cap - 1)];
}

/* Copies the live entries into a ring of new_cap (a power of two >= count), head at 0. */
static bool ring_resize(struct ot_part *p, size_t new_cap)
{
	struct ot_entry *r = malloc(new_cap * sizeof(*r));
	if (!r)
		return false;
	for (size_t i = 0; i < p->count; i++)
		r[i] = *entry_at(p, i);
	free(p->ring);
	p->ring = r;
	p->cap = new_cap;
	p->head = 0;
	return true;
}

static struct ot_part *part_get(const struct offtrack *t, int32_t partition)
{
	if (partition < 0 || (size_t)partition >= t->n_parts)
		return NULL;
	return t->parts[partition];
}

/* The partition's record, created on first use. */
static struct ot_part *part_obtain(struct offtrack *t, int32_t partition)
{
	if (partition < 0 || partition > OFFTRACK_MAX_PARTITION)
		return NULL;
	if ((size_t)partition >= t->n_parts) {
		size_t n = t->n_parts ? t->n_parts : 8;
		while (n <= (size_t)partition)
			n *= 2;
		struct ot_part **np = realloc(t->parts, n * sizeof(*np));
		if (!np)
			return NULL;
		memset(np + t->n_parts, 0, (n - t->n_parts) * sizeof(*np));
		t->parts = np;
		t->n_parts = n;
	}
	if (!t->parts[partition]) {
		struct ot_part *p = calloc(1, sizeof(*p));
		if (!p)
			return NULL;
		p->last_begun = p->next_commit = p->reported = -1;
		t->parts[partition] = p;
	}
	return t->parts[partition];
}

bool offtrack_begin(struct offtrack *t, int32_t partition, int64_t offset)
{
	if (offset < 0 || t->tracked_total >= t->max_tracked)
		return false;
	struct ot_part *p = part_obtain(t, partition);
	if (!p || offset <= p->last_begun)
		return false;
	if (p->count == p->cap && !ring_resize(p, p->cap ? p->cap * 2 : RING_MIN))
		return false;
	struct ot_entry *e = entry_at(p, p->count);
	e->offset = offset;
	e->done = false;
	p->count++;
	p->in_flight++;
	p->last_begun = offset;
	t->tracked_total++;
	t->in_flight_total++;
	return true;
}

/* Position of offset among the live entries, or SIZE_MAX. Dense offsets hit the first guess. */
static size_t part_find(const struct ot_part *p, int64_t offset)
{
	if (p->count == 0)
		return SIZE_MAX;
	int64_t first = entry_at(p, 0)->offset;
	if (offset < first || offset > p->last_begun)
		return SIZE_MAX;
	uint64_t guess = (uint64_t)(offset - first);
	if (guess < p->count && entry_at(p, guess)->offset == offset)
		return (size_t)guess;
	/* Gaps: offsets are strictly increasing, and entry i is at least first + i. */
	size_t lo = 0, hi = guess < p->count ? (size_t)guess : p->count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (entry_at(p, mid)->offset < offset)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < p->count && entry_at(p, lo)->offset == offset ? lo : SIZE_MAX;
}

/* Pops the done prefix, moving the committable position; shrinks a mostly empty ring. */
static void part_advance(struct offtrack *t, struct ot_part *p)
{
	while (p->count > 0 && entry_at(p, 0)->done) {
		p->next_commit = entry_at(p, 0)->offset + 1;
		p->head = (p->head + 1) & (p->cap - 1);
		p->count--;
		t->tracked_total--;
	}
	/* A failed shrink is harmless: the bigger ring keeps working. */
	if (p->cap > RING_SHRINK_ABOVE && p->count <= p->cap / 4 && !ring_resize(p, p->cap / 2))
		return;
}

bool offtrack_done(struct offtrack *t, int32_t partition, int64_t offset)
{
	struct ot_part *p = part_get(t, partition);
	if (!p)
		return false;
	size_t i = part_find(p, offset);
	if (i == SIZE_MAX || entry_at(p, i)->done)
		return false;
	entry_at(p, i)->done = true;
	p->in_flight--;
	t->in_flight_total--;
	if (i == 0)
		part_advance(t, p);
	return true;
}

bool offtrack_committable(struct offtrack *t, int32_t partition, int64_t *next_offset)
{
	struct ot_part *p = part_get(t, partition);
	if (!p || p->next_commit <= p->reported)
		return false;
	p->reported = p->next_commit;
	*next_offset = p->next_commit;
	return true;
}

bool offtrack_position(const struct offtrack *t, int32_t partition, int64_t *next_offset)
{
	const struct ot_part *p = part_get(t, partition);
	if (!p || p->next_commit < 0)
		return false;
	*next_offset = p->next_commit;
	return true;
}

size_t offtrack_in_flight(const struct offtrack *t, int32_t partition)
{
	const struct ot_part *p = part_get(t, partition);
	return p ? p->in_flight : 0;
}

size_t offtrack_in_flight_total(const struct offtrack *t)
{
	return t->in_flight_total;
}

size_t offtrack_tracked_total(const struct offtrack *t)
{
	return t->tracked_total;
}

void offtrack_drop_partition(struct offtrack *t, int32_t partition)
{
	struct ot_part *p = part_get(t, partition);
	if (!p)
		return;
	t->tracked_total -= p->count;
	t->in_flight_total -= p->in_flight;
	part_free(p);
	t->parts[partition] = NULL;
}
