/*
 * offtrack.h - per-partition offset tracking for at-least-once commits when work completes
 * out of order.
 *
 * For each partition of ONE input topic the tracker keeps the offsets that were begun and not
 * yet committable, in begin order (a ring buffer per partition). The committable position is
 * "highest contiguous done offset + 1", i.e. what rd_kafka_offsets_store wants: everything
 * below it is done. Offsets are begun in increasing order but may have gaps (compaction,
 * transaction markers); a gap is never waited for, since only begun offsets are tracked.
 *
 * Cost: begin O(1) amortised; done O(1) when offsets are dense, O(log n) with gaps, plus O(1)
 * amortised to advance past completed offsets. Memory: 16 bytes per tracked offset (begun, and
 * not yet below the committable position), bounded by max_tracked given at creation.
 *
 * Single-threaded: use it from the Kafka poll thread only.
 */
#ifndef CHATPROV_OFFTRACK_H
#define CHATPROV_OFFTRACK_H

#include "common.h"

/* Partition numbers accepted: 0 .. OFFTRACK_MAX_PARTITION. */
#define OFFTRACK_MAX_PARTITION 65535

struct offtrack;

/*
 * max_tracked bounds the offsets held over all partitions (in flight, plus done ones waiting
 * behind an earlier offset still in flight); offtrack_begin fails beyond it.
 */
bool offtrack_new(size_t max_tracked, struct offtrack **out) CP_MUSTCHECK;
void offtrack_free(struct offtrack *t);

/*
 * An event at `offset` was taken for processing. False if the partition number is out of
 * range, the offset is negative or not above the last one begun in this partition, the
 * max_tracked bound is reached, or memory runs out. Nothing changes on failure.
 */
bool offtrack_begin(struct offtrack *t, int32_t partition, int64_t offset) CP_MUSTCHECK;

/*
 * The event at `offset` is finished (its result acknowledged). False if that offset is not
 * in flight in this partition: never begun, already done, or its partition was dropped since
 * (a late acknowledgement after a revoke). Not CP_MUSTCHECK: ignoring false is normal.
 */
bool offtrack_done(struct offtrack *t, int32_t partition, int64_t offset);

/*
 * True if the committable position of the partition moved since the last call that returned
 * true (or since the partition was first begun); *next_offset = highest contiguous done
 * offset + 1. False when there is nothing new to store.
 */
bool offtrack_committable(struct offtrack *t, int32_t partition, int64_t *next_offset) CP_MUSTCHECK;

/*
 * The partition's committable position whether reported or not: *next_offset = highest
 * contiguous done offset + 1. False when nothing of it is done yet.
 */
bool offtrack_position(const struct offtrack *t, int32_t partition,
                       int64_t *next_offset) CP_MUSTCHECK;

/* Offsets begun and not done in a partition, and over all partitions. */
size_t offtrack_in_flight(const struct offtrack *t, int32_t partition);
size_t offtrack_in_flight_total(const struct offtrack *t);
/* Offsets held in memory (in flight + done but not yet contiguous), over all partitions. */
size_t offtrack_tracked_total(const struct offtrack *t);

/*
 * Forgets a partition (revoked or lost): its in-flight offsets are released and later
 * offtrack_done calls for them return false. Beginning it again starts from scratch.
 */
void offtrack_drop_partition(struct offtrack *t, int32_t partition);

#endif
