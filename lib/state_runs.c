/* state_runs.c - the state mirror's compact store: done requests in sorted runs (state.c). */
#include <stdlib.h>
#include <string.h>

#include "state_int.h"

/* ---- runs ---- */

static struct run *run_new(size_t len)
{
	struct run *r = malloc(sizeof *r + len * RUN_ENTRY_BYTES);
	if (!r)
		return NULL;
	r->len = len;
	r->dead = 0;
	/* The header's size is a multiple of 8 (it holds pointers): the arrays are aligned. */
	r->fp = (uint64_t *)(r + 1);
	r->packed = r->fp + len;
	r->at_s = (uint32_t *)(r->packed + len);
	return r;
}

size_t state_run_alive(const struct run *r)
{
	return r->len - r->dead;
}

static void run_copy(struct run *to, size_t j, const struct run *from, size_t i)
{
	to->fp[j] = from->fp[i];
	to->packed[j] = from->packed[i];
	to->at_s[j] = from->at_s[i];
}

/*
 * The done fields in run form. False when they do not fit (an offset of 2^47 or more, a
 * time before 1970-01-01T00:00:01): such a request simply stays in the live table.
 */
bool state_pack_done(int32_t partition, int64_t offset, bool succeeded, int64_t at_wall_ms,
                     uint64_t *packed, uint32_t *at_s)
{
	int64_t seconds = at_wall_ms / 1000;
	if (offset < 0 || offset >= OFFSET_LIMIT || partition < 0 || partition >= PARTITION_LIMIT ||
	    seconds < 1 || seconds > UINT32_MAX)
		return false;
	*packed = (uint64_t)offset << OFFSET_SHIFT | (uint64_t)partition << 1 | (uint64_t)succeeded;
	*at_s = (uint32_t)seconds;
	return true;
}

int32_t state_slot_partition(struct slot s)
{
	return (int32_t)((s.run->packed[s.i] >> 1) & (PARTITION_LIMIT - 1));
}

int64_t state_slot_at_ms(struct slot s)
{
	return (int64_t)s.run->at_s[s.i] * 1000;
}

void state_slot_read(struct slot s, struct state_info *out)
{
	uint64_t packed = s.run->packed[s.i];
	out->kind = STATE_DONE;
	out->partition = state_slot_partition(s);
	out->offset = (int64_t)(packed >> OFFSET_SHIFT);
	out->done_succeeded = packed & 1;
	out->at_wall_ms = state_slot_at_ms(s);
	out->fingerprint_only = true;
}

void state_slot_kill(struct slot s)
{
	s.run->at_s[s.i] = 0;
	s.run->dead++;
}

/*
 * The first index whose fingerprint is >= fp. Fingerprints are uniform (SHA-1), so
 * interpolating between the ends of the range lands next to the place in a few probes;
 * bisection finishes, and bounds the cost whatever the data.
 */
static size_t run_lower_bound(const struct run *r, uint64_t fp)
{
	size_t lo = 0, hi = r->len;
	for (int probes = 0; hi - lo > 16 && probes < 4; probes++) {
		uint64_t first = r->fp[lo], last = r->fp[hi - 1];
		if (fp <= first)
			return lo;
		if (fp > last)
			return hi;
		double share = (double)(fp - first) / (double)(last - first);
		size_t at = lo + (size_t)(share * (double)(hi - 1 - lo));
		at = at < hi ? at : hi - 1;
		if (r->fp[at] < fp)
			lo = at + 1;
		else
			hi = at;
	}
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (r->fp[mid] < fp)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The request with this fingerprint in the runs, newest run first. */
bool state_run_find(const struct state *st, uint64_t fp, struct slot *out)
{
	for (size_t r = st->n_runs; r-- > 0;) {
		struct run *run = st->runs[r];
		for (size_t i = run_lower_bound(run, fp); i < run->len && run->fp[i] == fp; i++) {
			if (run->at_s[i]) {
				*out = (struct slot){.run = run, .i = i};
				return true;
			}
		}
	}
	return false;
}

/* Both runs in one, in order, without their dead slots. */
static struct run *run_merge(const struct run *a, const struct run *b)
{
	struct run *m = run_new(state_run_alive(a) + state_run_alive(b));
	if (!m)
		return NULL;
	size_t i = 0, j = 0, k = 0;
	while (i < a->len || j < b->len) {
		bool from_a = j == b->len || (i < a->len && a->fp[i] <= b->fp[j]);
		const struct run *from = from_a ? a : b;
		size_t at = from_a ? i++ : j++;
		if (from->at_s[at])
			run_copy(m, k++, from, at);
	}
	return m;
}

static bool runs_reserve(struct state *st)
{
	if (st->n_runs < st->runs_cap)
		return true;
	size_t cap = st->runs_cap ? st->runs_cap * 2 : RUNS_INITIAL;
	struct run **runs = realloc(st->runs, cap * sizeof *runs);
	if (!runs)
		return false;
	st->runs = runs;
	st->runs_cap = cap;
	return true;
}

static void runs_remove(struct state *st, size_t r)
{
	free(st->runs[r]);
	memmove(&st->runs[r], &st->runs[r + 1], (st->n_runs - r - 1) * sizeof *st->runs);
	st->n_runs--;
}

/* The indexes of the two runs with the fewest alive entries (n_runs >= 2), a first. */
static void two_smallest(const struct state *st, size_t *a, size_t *b)
{
	*a = 0;
	*b = 1;
	if (state_run_alive(st->runs[1]) < state_run_alive(st->runs[0])) {
		*a = 1;
		*b = 0;
	}
	for (size_t r = 2; r < st->n_runs; r++) {
		size_t alive = state_run_alive(st->runs[r]);
		if (alive < state_run_alive(st->runs[*a])) {
			*b = *a;
			*a = r;
		} else if (alive < state_run_alive(st->runs[*b])) {
			*b = r;
		}
	}
}

/* Rewrites run r without its dead slots; on allocation failure they stay a little longer. */
static void run_rewrite(struct state *st, size_t r)
{
	static const struct run no_run = {0};
	struct run *copy = run_merge(st->runs[r], &no_run);
	if (!copy)
		return;
	free(st->runs[r]);
	st->runs[r] = copy;
}

/*
 * Keeps the runs few and dense: a run a quarter dead is rewritten (each rewrite pays for
 * itself with the slots it frees), and the two smallest runs merge while they fit in
 * RUN_CAP together and are of comparable sizes (or small: runs shrunk by forgetting join up
 * again). A failed merge leaves the runs as they are: lookups get slower, not wrong.
 */
static void merge_runs(struct state *st)
{
	for (size_t r = st->n_runs; r-- > 0;) {
		if (state_run_alive(st->runs[r]) == 0)
			runs_remove(st, r);
		else if (st->runs[r]->dead * 4 > st->runs[r]->len)
			run_rewrite(st, r);
	}
	while (st->n_runs >= 2) {
		size_t a, b;
		two_smallest(st, &a, &b);
		size_t small = state_run_alive(st->runs[a]), large = state_run_alive(st->runs[b]);
		if (small + large > RUN_CAP || (2 * small < large && small + large > RUN_CAP / 4))
			return;
		struct run *m = run_merge(st->runs[a], st->runs[b]);
		if (!m)
			return;
		/* The merged run takes the newer place. */
		size_t newer = a > b ? a : b, older = a > b ? b : a;
		free(st->runs[newer]);
		st->runs[newer] = m;
		runs_remove(st, older);
	}
}

/* Rewrites every run that has dead slots, without them (memory back to the allocator). */
void state_runs_drop_dead(struct state *st)
{
	for (size_t r = 0; r < st->n_runs; r++)
		if (st->runs[r]->dead)
			run_rewrite(st, r);
	merge_runs(st);
}

/* Removes the run entries `leaves` selects; returns how many. */
size_t state_runs_sweep(struct state *st, slot_leaves_fn *leaves, const void *arg)
{
	size_t removed = 0;
	for (size_t r = 0; r < st->n_runs; r++) {
		for (size_t i = 0; i < st->runs[r]->len; i++) {
			struct slot s = {.run = st->runs[r], .i = i};
			if (s.run->at_s[i] && leaves(s, arg)) {
				state_slot_kill(s);
				removed++;
			}
		}
	}
	state_runs_drop_dead(st);
	return removed;
}

/* ---- compaction: done entries from the live table into a run ---- */

struct done_batch {
	struct run *run;
	size_t n;
};

static bool movable(const struct entry *e, uint64_t *packed, uint32_t *at_s)
{
	return e->kind == STATE_DONE && !e->active &&
	       state_pack_done(e->partition, e->offset, e->done_succeeded, e->at_wall_ms, packed,
	                       at_s);
}

static bool count_movable(const struct entry *e, void *arg)
{
	uint64_t packed;
	uint32_t at_s;
	size_t *n = arg;
	*n += movable(e, &packed, &at_s);
	return false;
}

static bool move_to_batch(const struct entry *e, void *arg)
{
	struct done_batch *batch = arg;
	uint64_t packed;
	uint32_t at_s;
	if (batch->n == batch->run->len || !movable(e, &packed, &at_s))
		return false;
	batch->run->fp[batch->n] = state_fingerprint(e->key);
	batch->run->packed[batch->n] = packed;
	batch->run->at_s[batch->n] = at_s;
	batch->n++;
	return true;
}

/*
 * Sorts a run's entries by fingerprint (they come in the hash's order), by a bottom-up
 * merge sort through tmp, a run of the same length: qsort cannot move three arrays at once.
 */
static void run_sort(struct run *r, struct run *tmp)
{
	struct run *from = r, *to = tmp;
	for (size_t width = 1; width < r->len; width *= 2) {
		for (size_t lo = 0; lo < r->len; lo += 2 * width) {
			size_t mid = lo + width < r->len ? lo + width : r->len;
			size_t hi = mid + width < r->len ? mid + width : r->len;
			size_t i = lo, j = mid;
			for (size_t k = lo; k < hi; k++) {
				bool left = j == hi || (i < mid && from->fp[i] <= from->fp[j]);
				run_copy(to, k, from, left ? i++ : j++);
			}
		}
		struct run *swap = from;
		from = to;
		to = swap;
	}
	for (size_t k = 0; from != r && k < r->len; k++)
		run_copy(r, k, from, k);
}

/*
 * Moves up to RUN_CAP done, inactive entries into a new run; *moved says how many. All
 * memory is taken before the first entry moves: on failure nothing has changed.
 */
static bool compact_batch(struct state *st, size_t *moved)
{
	size_t n = 0;
	*moved = 0;
	(void)state_live_sweep(st, count_movable, &n);
	if (n == 0)
		return true;
	n = n < RUN_CAP ? n : RUN_CAP;
	struct done_batch batch = {.run = run_new(n)};
	struct run *tmp = run_new(n);
	if (!batch.run || !tmp || !runs_reserve(st))
		goto fail;
	(void)state_live_sweep(st, move_to_batch, &batch);
	run_sort(batch.run, tmp);
	free(tmp);
	st->runs[st->n_runs++] = batch.run;
	*moved = batch.n;
	return true;
fail:
	free(tmp);
	free(batch.run);
	return false;
}

/*
 * Once COMPACT_EVERY entries became done and inactive, the live table's done, inactive
 * entries move into runs: at most that many wait there, however many jobs are in progress.
 * Out of memory, they stay where they are: correct, only bigger.
 */
void state_compact(struct state *st, const struct entry *changed)
{
	if (changed->kind != STATE_DONE || changed->active ||
	    ++st->done_since_compact < COMPACT_EVERY)
		return;
	st->done_since_compact = 0;
	size_t moved = 0;
	while (compact_batch(st, &moved) && moved == RUN_CAP)
		continue;
	merge_runs(st);
}
