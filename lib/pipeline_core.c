/*
 * pipeline_core.c - the bottom of the pipeline: state every other pipeline file shares.
 *
 * Owns: the partition table (core_partition), the generation test (core_job_is_current,
 * core_settles_here), the accounting of jobs in memory (core_mark_result_queued,
 * core_release), the credit wake-up (core_wake_for_credit), offset store and commit, and the
 * long waits' tick (core_wait_tick).
 * Invariants: a job is released exactly once, and its release returns its memory to the
 * credit and wakes the Kafka thread if it waits for credit; core_partition may move the
 * table, so a partition_state pointer is not kept across it.
 * Callers: every other pipeline file; the workers through core_job_is_current (a hook) and,
 * via pipeline.c's took_work, core_wake_for_credit. Calls nothing above it.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cptime.h"
#include "log.h"
#include "pipeline_int.h"

/* Offsets finished behind a slow one still cost a little memory each: bounded too. */
#define TRACKED_PER_QUEUED 4

/* One turn of a long wait; the caller's hook feeds the watchdog if it advanced lately. */
void core_wait_tick(struct pipeline *p, bool advanced)
{
	int64_t now = cptime_mono_ms();
	if (!p->waiting || advanced)
		p->wait_advanced_ms = now;
	p->waiting = true;
	if (p->wait_hook)
		p->wait_hook(p->wait_hook_arg);
}

struct partition_state *core_partition(struct pipeline *p, int32_t id)
{
	if (id < 0)
		return NULL;
	if ((size_t)id >= p->n_parts) {
		size_t n = (size_t)id + 1;
		struct partition_state *parts = realloc(p->parts, n * sizeof *parts);
		if (!parts)
			return NULL;
		memset(parts + p->n_parts, 0, (n - p->n_parts) * sizeof *parts);
		p->parts = parts;
		p->n_parts = n;
	}
	return &p->parts[id];
}

/* Stores, for every partition that progressed, the next offset to commit. */
void core_store_offsets(struct pipeline *p)
{
	rd_kafka_topic_partition_list_t *list = NULL;
	for (size_t i = 0; i < p->n_parts; i++) {
		struct partition_state *ps = &p->parts[i];
		int64_t next;
		if (!ps->assigned || !ps->dirty)
			continue;
		ps->dirty = false;
		if (!offtrack_committable(p->offsets, (int32_t)i, &next))
			continue;
		if (!list && !(list = rd_kafka_topic_partition_list_new(8)))
			return;
		rd_kafka_topic_partition_list_add(list, p->cfg->kafka.input_topic, (int32_t)i)
		    ->offset = next;
	}
	if (!list)
		return;
	rd_kafka_resp_err_t err = rd_kafka_offsets_store(p->consumer, list);
	if (err && err != RD_KAFKA_RESP_ERR__STATE)
		log_warning("cannot store offsets: %s", rd_kafka_err2str(err));
	rd_kafka_topic_partition_list_destroy(list);
}

size_t core_tracked_limit(const struct pipeline *p)
{
	return p->cfg->kafka.max_queued * TRACKED_PER_QUEUED;
}

/*
 * Workers and releases call this after changing what intake_credit() reads; cheap when nobody
 * waits. Sequentially consistent on both sides (the Kafka thread raises the flag, then
 * reads): one of the two sees the other, and the poll timeout bounds any miss anyway.
 */
void core_wake_for_credit(struct pipeline *p)
{
	if (!atomic_load(&p->wants_credit) || !atomic_exchange(&p->wants_credit, false))
		return;
	uint64_t one = 1;
	if (write(p->wake_fd, &one, sizeof one) < 0) {
		/* EAGAIN: the counter is full, so a wake-up is pending anyway. */
	}
}

bool core_job_is_current(const struct job *job, void *arg)
{
	const struct pipeline *p = arg;
	return atomic_load(&p->generations[job->partition]) == job->generation;
}

/* A result of this job may still move its partition's offsets and state. */
bool core_settles_here(struct pipeline *p, const struct job *job)
{
	struct partition_state *ps = core_partition(p, job->partition);
	return ps && ps->assigned &&
	       (core_job_is_current(job, p) ||
	        (ps->handing_over && job->generation == ps->handing_over));
}

/* A wait of up to want_ms, cut to what is left of the finish deadline when there is one. */
int core_within_finish(const struct pipeline *p, int want_ms)
{
	if (!p->finish_deadline_ms)
		return want_ms;
	int64_t left = p->finish_deadline_ms - cptime_mono_ms();
	return left <= 0 ? 0 : left < want_ms ? (int)left : want_ms;
}

/*
 * Commits the stored offsets and waits at most timeout_ms for the coordinator's answer: a
 * synchronous rd_kafka_commit waits without a bound for a coordinator that is away.
 */
rd_kafka_resp_err_t core_commit_within(struct pipeline *p, int timeout_ms)
{
	rd_kafka_queue_t *q = rd_kafka_queue_new(p->consumer);
	if (!q)
		return RD_KAFKA_RESP_ERR__NOENT;
	rd_kafka_resp_err_t err = rd_kafka_commit_queue(p->consumer, NULL, q, NULL, NULL);
	if (!err) {
		rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms);
		err = ev ? rd_kafka_event_error(ev) : RD_KAFKA_RESP_ERR__TIMED_OUT;
		if (ev)
			rd_kafka_event_destroy(ev);
	}
	rd_kafka_queue_destroy(q);
	return err;
}

/* Its result goes to the producer now: from here on it only waits for the ack. */
void core_mark_result_queued(struct pipeline *p, struct job *job)
{
	if (!job->result_queued)
		atomic_fetch_add(&p->awaiting_ack, 1);
	job->result_queued = true;
}

/* A job leaves memory: abandoned (revoke, drain) or settled. Any thread. */
void core_release(struct pipeline *p, struct job *job)
{
	if (job->result_queued)
		atomic_fetch_sub(&p->awaiting_ack, 1);
	atomic_fetch_sub(&p->memory_bytes, job->memory_bytes);
	atomic_fetch_sub(&p->in_memory, 1);
	job_free(job);
	core_wake_for_credit(p);
}
