/*
 * pipeline_intake.c - the Kafka thread takes input messages as far as its credit goes.
 *
 * Owns: the intake queue and its wake-up descriptor (intake_open/intake_close), the credit
 * (the memory bound, the byte bound, the read-ahead), the sleep between turns
 * (intake_wait_for_work), unreadable messages held and fetched again, and messages the
 * previous owner answered (skipped).
 * Invariants: nothing at or after an unreadable offset is taken before it is read; a
 * message of a partition not assigned is never admitted; the credit never lets memory pass
 * max_queued, max_queued_bytes (by one event at most) or the read-ahead.
 * Callers: pipeline.c (pipeline_poll, start, finish, free). Calls dispatch (admit) and core;
 * rebalances reach pipeline_rebalance.c through librdkafka's callback, not from here.
 */
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "cptime.h"
#include "log.h"
#include "pipeline_int.h"

/* Results awaiting the broker's ack, per unit of read-ahead: room for bursty acks. */
#define ACKS_PER_READ_AHEAD 4
/* An unreadable input message is fetched again after this, doubling up to the max. */
#define REFETCH_BASE_MS 100
#define REFETCH_MAX_MS  30000

static bool is_input_topic(struct pipeline *p, const char *topic)
{
	return strcmp(topic, p->cfg->kafka.input_topic) == 0;
}

static size_t room_under(size_t used, size_t bound)
{
	return used < bound ? bound - used : 0;
}

static size_t min_size(size_t a, size_t b)
{
	return a < b ? a : b;
}

/*
 * Memory: work still to do counts against max_queued; results waiting for the broker's
 * acknowledgement against their own, smaller bound (a stalled producer stops intake
 * instead of piling up results); offsets finished behind a slow one are bounded too.
 */
static size_t memory_room(const struct pipeline *p)
{
	size_t in_memory = atomic_load(&p->in_memory);
	size_t awaiting = atomic_load(&p->awaiting_ack);
	size_t to_do = in_memory > awaiting ? in_memory - awaiting : 0;
	size_t room = room_under(to_do, p->cfg->kafka.max_queued);
	if (atomic_load(&p->memory_bytes) >= p->cfg->kafka.max_queued_bytes)
		room = 0;
	room = min_size(room, room_under(awaiting, p->read_ahead * ACKS_PER_READ_AHEAD));
	return min_size(room,
	                room_under(offtrack_tracked_total(p->offsets), core_tracked_limit(p)));
}

/* The paused flag (metrics, STATUS) says whether a memory bound holds intake back. */
static void note_memory_bound(struct pipeline *p, size_t room)
{
	bool paused = room == 0;
	if (paused != p->paused)
		log_debug("%s intake: %zu events in memory, %zu awaiting acks",
		          paused ? "stopping" : "resuming", (size_t)atomic_load(&p->in_memory),
		          (size_t)atomic_load(&p->awaiting_ack));
	p->paused = paused;
}

/*
 * How many events may be taken from librdkafka now. Besides the memory bound, a
 * read-ahead bound: jobs that could be sent now but wait for a free worker slot are pure
 * queueing delay here (receivedAt counts from consumption), and in Kafka they cost
 * nothing, so at most read_ahead of them (with the group chats waiting for their intent's
 * acknowledgement) are held. Work waiting for tokens or a Retry-After is not sendable and
 * does not count: a throttled tenant never stops the others behind it in a partition.
 */
size_t intake_credit(struct pipeline *p)
{
	if (p->draining)
		return 0;
	size_t room = memory_room(p);
	note_memory_bound(p, room);
	if (room == 0)
		return 0;
	size_t ahead =
	    pacer_sendable(p->pacer, cptime_mono_ms(), p->read_ahead) + p->intents_pending;
	return min_size(room, room_under(ahead, p->read_ahead));
}

/*
 * A consumer error at an offset of an input core_partition (a corrupt batch librdkafka skips,
 * a fetch that failed there): the message at that offset was not read, so nothing after it
 * may be taken, or its offset would be committed past it without a result. The partition
 * is held there and sought back to it after a backoff (refetch_unreadable); a message that
 * stays unreadable holds its partition, with an error each time (docs/crash-safety.md).
 */
static void hold_unreadable(struct pipeline *p, struct partition_state *ps,
                            const rd_kafka_message_t *msg)
{
	if (ps->refetch_pending && msg->offset >= ps->refetch_offset)
		return; /* held at or before it already */
	unsigned shift = ps->refetch_tries < 16 ? ps->refetch_tries : 16;
	int64_t delay = (int64_t)REFETCH_BASE_MS << shift;
	if (delay > REFETCH_MAX_MS)
		delay = REFETCH_MAX_MS;
	ps->refetch_pending = true;
	ps->refetch_offset = msg->offset;
	ps->refetch_due_ms = cptime_mono_ms() + delay;
	ps->refetch_tries++;
	pipeline_metrics_unreadable(p->metrics);
	log_error("%s [%d] @%lld unreadable: %s; nothing after it is taken, fetching it again "
	          "in %lld ms",
	          rd_kafka_topic_name(msg->rkt), (int)msg->partition, (long long)msg->offset,
	          rd_kafka_message_errstr(msg), (long long)delay);
}

/* Seeks the held partitions whose backoff ended back to their unreadable message. */
void intake_refetch_unreadable(struct pipeline *p)
{
	int64_t now = cptime_mono_ms();
	for (size_t i = 0; i < p->n_parts; i++) {
		struct partition_state *ps = &p->parts[i];
		if (!ps->assigned || !ps->refetch_pending || ps->refetch_due_ms > now)
			continue;
		rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
		if (!list)
			return;
		rd_kafka_topic_partition_list_add(list, p->cfg->kafka.input_topic, (int32_t)i)
		    ->offset = ps->refetch_offset;
		/* Asynchronous; what was fetched before it is discarded by librdkafka. */
		rd_kafka_error_t *error = rd_kafka_seek_partitions(p->consumer, list, 0);
		if (error) {
			log_warning("cannot seek [%d] back to @%lld: %s", (int)i,
			            (long long)ps->refetch_offset, rd_kafka_error_string(error));
			rd_kafka_error_destroy(error);
			ps->refetch_due_ms = now + REFETCH_BASE_MS;
		} else {
			ps->refetch_pending = false;
		}
		rd_kafka_topic_partition_list_destroy(list);
	}
}

/* A message the previous owner answered (its hand-over mark): only its offset moves. */
static void skip_answered(struct pipeline *p, struct partition_state *ps,
                          const rd_kafka_message_t *msg)
{
	if (!offtrack_begin(p->offsets, msg->partition, msg->offset)) {
		log_error("offset tracker refused [%d] @%lld", (int)msg->partition,
		          (long long)msg->offset);
		atomic_store(&p->fatal, true);
		return;
	}
	(void)offtrack_done(p->offsets, msg->partition, msg->offset);
	ps->dirty = true;
	pipeline_metrics_handover_skipped(p->metrics);
}

static void take_message(struct pipeline *p, const rd_kafka_message_t *msg)
{
	struct partition_state *ps = core_partition(p, msg->partition);
	/* A message of a partition revoked meanwhile is not ours to process. */
	bool ours =
	    ps && ps->assigned && msg->rkt && is_input_topic(p, rd_kafka_topic_name(msg->rkt));
	if (msg->err) {
		if (msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
			return;
		if (ours && msg->offset >= 0)
			hold_unreadable(p, ps, msg);
		else
			log_warning("consumer: %s", rd_kafka_message_errstr(msg));
		return;
	}
	if (!ours || (ps->refetch_pending && msg->offset >= ps->refetch_offset))
		return; /* not ours, or behind an unreadable one: fetched again after the seek */
	if (ps->refetch_tries && msg->offset >= ps->refetch_offset)
		ps->refetch_tries = 0;
	if (msg->offset < ps->answered_below) {
		skip_answered(p, ps, msg);
		return;
	}
	dispatch_admit(p, msg);
}

/*
 * Events that fit in the byte bound, judged by the largest event seen (or, before any, the
 * largest message allowed): a batch passes max_queued_bytes by one event at most.
 */
static size_t fit_in_bytes(struct pipeline *p)
{
	size_t room = room_under(atomic_load(&p->memory_bytes), p->cfg->kafka.max_queued_bytes);
	size_t largest = p->largest_event ? p->largest_event : p->cfg->kafka.max_message_bytes;
	size_t n = room / largest;
	return n ? n : 1;
}

/* Takes up to the credit from the intake queue; returns how many messages it took. */
size_t intake_take_messages(struct pipeline *p, size_t credit)
{
	rd_kafka_message_t *msgs[MESSAGES_PER_TURN];
	size_t n = min_size(min_size(credit, MESSAGES_PER_TURN), fit_in_bytes(p));
	ssize_t got = rd_kafka_consume_batch_queue(p->messages, 0, msgs, n);
	for (ssize_t i = 0; i < got; i++) {
		take_message(p, msgs[i]);
		rd_kafka_message_destroy(msgs[i]);
	}
	return got > 0 ? (size_t)got : 0;
}

/* Rebalances (through the callback) and consumer errors: the group's own queue. */
void intake_serve_consumer_events(struct pipeline *p)
{
	rd_kafka_message_t *msg;
	while ((msg = rd_kafka_consumer_poll(p->consumer, 0)) != NULL) {
		take_message(p, msg); /* errors; messages not expected: every partition forwards */
		rd_kafka_message_destroy(msg);
	}
}

/*
 * Sleeps until something is due: an event, a delivery report or (with credit) a message
 * arrives, librdkafka writing wake_fd as its queue turns non-empty; or credit returns,
 * a worker or a release writing it. Every queue was drained just before, so no wake-up
 * is lost; with messages waiting, only credit is waited for.
 */
void intake_wait_for_work(struct pipeline *p, bool has_credit, int timeout_ms)
{
	if (has_credit && rd_kafka_queue_length(p->messages) > 0)
		return;
	if (!has_credit) {
		atomic_store(&p->wants_credit, true);
		if (intake_credit(p) > 0) { /* returned before the flag was up */
			atomic_store(&p->wants_credit, false);
			return;
		}
	}
	struct pollfd pfd = {.fd = p->wake_fd, .events = POLLIN};
	if (poll(&pfd, 1, timeout_ms) > 0) {
		uint64_t count;
		if (read(p->wake_fd, &count, sizeof count) < 0) {
			/* EAGAIN: another reader was faster; nothing to reset */
		}
	}
	atomic_store(&p->wants_credit, false);
}

/* librdkafka writes wake_fd when one of these queues turns non-empty. */
static void set_wakeups(struct pipeline *p, int fd)
{
	static const uint64_t one = 1; /* an eventfd takes 8-byte increments */
	rd_kafka_queue_t *group = rd_kafka_queue_get_consumer(p->consumer);
	rd_kafka_queue_t *reports = rd_kafka_queue_get_main(p->producer);
	rd_kafka_queue_io_event_enable(p->messages, fd, &one, sizeof one);
	if (group)
		rd_kafka_queue_io_event_enable(group, fd, &one, sizeof one);
	if (reports)
		rd_kafka_queue_io_event_enable(reports, fd, &one, sizeof one);
	if (group)
		rd_kafka_queue_destroy(group);
	if (reports)
		rd_kafka_queue_destroy(reports);
}

bool intake_open(struct pipeline *p, char *err, size_t errcap)
{
	p->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	p->messages = rd_kafka_queue_new(p->consumer);
	if (p->wake_fd < 0 || !p->messages) {
		snprintf(err, errcap, "cannot create the intake queue");
		return false;
	}
	set_wakeups(p, p->wake_fd);
	return true;
}

/* Before the consumer goes: librdkafka must not write to a closed descriptor. */
void intake_close(struct pipeline *p)
{
	if (p->messages) {
		set_wakeups(p, -1);
		rd_kafka_queue_destroy(p->messages);
		p->messages = NULL;
	}
	if (p->wake_fd >= 0)
		close(p->wake_fd);
	p->wake_fd = -1;
}
