/* ctl_kafka.c - chatprovctl's reads: a topic's ranges and their messages, no group joined. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"
#include "ctl.h"

#define META_TIMEOUT_MS 10000
/* A read that receives nothing for this long has lost the broker. */
#define STALL_MS 30000

static bool topic_partitions(rd_kafka_t *rk, const char *topic, int32_t **ids, size_t *n, char *err,
                             size_t errcap)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR__INVALID_ARG;
	if (rkt)
		e = rd_kafka_metadata(rk, 0, rkt, &md, META_TIMEOUT_MS);
	bool ok = false;
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR || !md || md->topic_cnt != 1) {
		snprintf(err, errcap, "%s: cannot read its metadata: %s", topic,
		         rd_kafka_err2str(e));
		goto fail;
	}
	if (md->topics[0].err) {
		snprintf(err, errcap, "%s: %s", topic, rd_kafka_err2str(md->topics[0].err));
		goto fail;
	}
	*n = (size_t)md->topics[0].partition_cnt;
	*ids = calloc(*n ? *n : 1, sizeof **ids);
	if (!*ids) {
		snprintf(err, errcap, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < *n; i++)
		(*ids)[i] = md->topics[0].partitions[i].id;
	ok = true;
fail:
	if (md)
		rd_kafka_metadata_destroy(md);
	if (rkt)
		rd_kafka_topic_destroy(rkt);
	return ok;
}

/* The group's committed offsets into r[i].start where it has one (and it is in range). */
static bool apply_committed(rd_kafka_t *rk, const char *topic, struct ctl_range *r, size_t n,
                            char *err, size_t errcap)
{
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new((int)n);
	for (size_t i = 0; i < n; i++)
		rd_kafka_topic_partition_list_add(list, topic, r[i].partition);
	rd_kafka_resp_err_t e = rd_kafka_committed(rk, list, META_TIMEOUT_MS);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errcap, "cannot read the group's committed offsets: %s",
		         rd_kafka_err2str(e));
		rd_kafka_topic_partition_list_destroy(list);
		return false;
	}
	for (int i = 0; i < list->cnt; i++) {
		int64_t off = list->elems[i].offset;
		if (off >= r[i].start && off <= r[i].end)
			r[i].start = off;
		else if (off > r[i].end)
			r[i].start = r[i].end;
	}
	rd_kafka_topic_partition_list_destroy(list);
	return true;
}

bool ctl_topic_ranges(rd_kafka_t *rk, const char *topic, bool from_committed,
                      struct ctl_range **ranges, size_t *n, char *err, size_t errcap)
{
	int32_t *ids = NULL;
	if (!topic_partitions(rk, topic, &ids, n, err, errcap))
		return false;
	struct ctl_range *r = calloc(*n ? *n : 1, sizeof *r);
	if (!r) {
		snprintf(err, errcap, "out of memory");
		free(ids);
		return false;
	}
	for (size_t i = 0; i < *n; i++) {
		int64_t low, high;
		rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, ids[i], &low,
		                                                         &high, META_TIMEOUT_MS);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
			snprintf(err, errcap, "%s [%d]: cannot read its offsets: %s", topic,
			         (int)ids[i], rd_kafka_err2str(e));
			free(ids);
			free(r);
			return false;
		}
		r[i] = (struct ctl_range){.partition = ids[i], .start = low, .end = high};
	}
	free(ids);
	if (from_committed && *n && !apply_committed(rk, topic, r, *n, err, errcap)) {
		free(r);
		return false;
	}
	*ranges = r;
	return true;
}

int64_t ctl_ranges_total(const struct ctl_range *ranges, size_t n)
{
	int64_t total = 0;
	for (size_t i = 0; i < n; i++)
		total += ranges[i].end > ranges[i].start ? ranges[i].end - ranges[i].start : 0;
	return total;
}

/* Index of the range of a partition; n when there is none. */
static size_t range_of(const struct ctl_range *ranges, size_t n, int32_t partition)
{
	for (size_t i = 0; i < n; i++)
		if (ranges[i].partition == partition)
			return i;
	return n;
}

/* Takes one message: false when the read must stop (fn said so). */
static bool take(const rd_kafka_message_t *msg, const struct ctl_range *ranges, size_t n,
                 bool *done, size_t *open, ctl_message_fn *fn, void *arg)
{
	size_t i = range_of(ranges, n, msg->partition);
	if (i == n || done[i])
		return true;
	bool eof = msg->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
	bool keep = true;
	if (!msg->err && msg->offset < ranges[i].end)
		keep = fn(msg, arg);
	if (eof || msg->offset + 1 >= ranges[i].end) {
		done[i] = true;
		(*open)--;
	}
	return keep;
}

static bool read_assigned(rd_kafka_t *rk, const struct ctl_range *ranges, size_t n, bool *done,
                          size_t open, ctl_message_fn *fn, void *arg, char *err, size_t errcap)
{
	int64_t last = cptime_mono_ms();
	while (open > 0) {
		rd_kafka_message_t *msg = rd_kafka_consumer_poll(rk, 200);
		if (!msg) {
			if (cptime_mono_ms() - last > STALL_MS) {
				snprintf(err, errcap, "no message for %d s: broker unreachable?",
				         STALL_MS / 1000);
				return false;
			}
			continue;
		}
		last = cptime_mono_ms();
		bool fatal = msg->err && msg->err != RD_KAFKA_RESP_ERR__PARTITION_EOF &&
		             msg->err != RD_KAFKA_RESP_ERR__TRANSPORT;
		if (fatal)
			snprintf(err, errcap, "%s", rd_kafka_message_errstr(msg));
		bool keep = !fatal && take(msg, ranges, n, done, &open, fn, arg);
		rd_kafka_message_destroy(msg);
		if (fatal)
			return false;
		if (!keep)
			return true;
	}
	return true;
}

bool ctl_read_ranges(rd_kafka_t *rk, const char *topic, const struct ctl_range *ranges, size_t n,
                     ctl_message_fn *fn, void *arg, char *err, size_t errcap)
{
	bool *done = calloc(n ? n : 1, sizeof *done);
	rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new((int)n);
	size_t open = 0;
	bool ok = false;
	if (!done || !list) {
		snprintf(err, errcap, "out of memory");
		goto fail;
	}
	for (size_t i = 0; i < n; i++) {
		done[i] = ranges[i].start >= ranges[i].end;
		if (done[i])
			continue;
		rd_kafka_topic_partition_list_add(list, topic, ranges[i].partition)->offset =
		    ranges[i].start;
		open++;
	}
	rd_kafka_resp_err_t e = rd_kafka_assign(rk, list);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		snprintf(err, errcap, "%s: cannot assign: %s", topic, rd_kafka_err2str(e));
		goto fail;
	}
	ok = read_assigned(rk, ranges, n, done, open, fn, arg, err, errcap);
	rd_kafka_assign(rk, NULL);
fail:
	if (list)
		rd_kafka_topic_partition_list_destroy(list);
	free(done);
	return ok;
}
