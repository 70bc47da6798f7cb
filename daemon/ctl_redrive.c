/* ctl_redrive.c - `chatprovctl redrive`: DLQ records that match, back to the input topic. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "kafka.h"
#include "redrive.h"

#define FLUSH_TIMEOUT_MS 30000

struct redrive_opts {
	struct redrive_filter filter;
	long long limit; /* 0: no limit */
	bool dry_run;
};

struct redrive_run {
	const struct cfg *cfg;
	const struct redrive_opts *o;
	rd_kafka_t *producer;
	long long matched, moved, skipped, delivery_failures;
	char err[CP_ERRSTR_SIZE];
	bool failed;
};

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
	struct redrive_run *r = opaque;
	(void)rk;
	if (msg->err) {
		r->delivery_failures++;
		fprintf(stderr, "chatprovctl redrive: a copy was not delivered: %s\n",
		        rd_kafka_err2str(msg->err));
	}
}

/* The record's key for people: printable as it is, else its length. */
static void print_record(const rd_kafka_message_t *msg, const char *what)
{
	const unsigned char *k = msg->key;
	bool printable = msg->key_len > 0 && msg->key_len <= 200;
	for (size_t i = 0; printable && i < msg->key_len; i++)
		printable = k[i] >= 0x20 && k[i] < 0x7f;
	if (printable)
		printf("%s %s [%d] @%lld key %.*s\n", what, rd_kafka_topic_name(msg->rkt),
		       (int)msg->partition, (long long)msg->offset, (int)msg->key_len,
		       (const char *)msg->key);
	else
		printf("%s %s [%d] @%lld (%zu-byte key)\n", what, rd_kafka_topic_name(msg->rkt),
		       (int)msg->partition, (long long)msg->offset, msg->key_len);
}

static bool copy_back(struct redrive_run *r, const rd_kafka_message_t *msg)
{
	rd_kafka_headers_t *src = NULL, *h;
	if (rd_kafka_message_headers(msg, &src) != RD_KAFKA_RESP_ERR_NO_ERROR)
		src = NULL;
	h = redrive_headers(src);
	if (!h) {
		snprintf(r->err, sizeof r->err, "out of memory");
		return false;
	}
	for (;;) {
		rd_kafka_resp_err_t e =
		    rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(r->cfg->kafka.input_topic),
		                      RD_KAFKA_V_KEY(msg->key, msg->key_len),
		                      RD_KAFKA_V_VALUE(msg->payload, msg->len),
		                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
		                      RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
		if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
			return true; /* the producer owns h now */
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
			snprintf(r->err, sizeof r->err, "cannot produce to %s: %s",
			         r->cfg->kafka.input_topic, rd_kafka_err2str(e));
			rd_kafka_headers_destroy(h);
			return false;
		}
		rd_kafka_poll(r->producer, 100);
	}
}

static bool on_record(const rd_kafka_message_t *msg, void *arg)
{
	struct redrive_run *r = arg;
	rd_kafka_headers_t *h = NULL;
	if (rd_kafka_message_headers(msg, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
		h = NULL;
	if (!redrive_match(&r->o->filter, h, msg->payload, msg->len,
	                   rd_kafka_message_timestamp(msg, NULL)))
		return true;
	r->matched++;
	if (redrive_truncated(h)) {
		r->skipped++;
		print_record(msg, "skipped (value not kept: over max_message_bytes)");
	} else if (r->o->dry_run) {
		print_record(msg, "would move");
	} else if (copy_back(r, msg)) {
		r->moved++;
		print_record(msg, "moved");
		rd_kafka_poll(r->producer, 0);
	} else {
		r->failed = true;
		return false;
	}
	return r->o->limit == 0 || r->matched < r->o->limit;
}

static bool read_dlq(struct redrive_run *r)
{
	struct ctl_range *ranges = NULL;
	size_t n = 0;
	const char *dlq = r->cfg->kafka.dlq_topic;
	rd_kafka_t *rk = kafka_inspector_new(r->cfg, r->err, sizeof r->err);
	bool ok = rk && ctl_topic_ranges(rk, dlq, false, &ranges, &n, r->err, sizeof r->err) &&
	          ctl_read_ranges(rk, dlq, ranges, n, on_record, r, r->err, sizeof r->err);
	free(ranges);
	if (rk) {
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	}
	return ok && !r->failed;
}

static int bad_option(const char *what, const char *value)
{
	fprintf(stderr, "chatprovctl redrive: invalid %s '%s'\n", what, value);
	return CTL_USAGE;
}

static int parse_opts(int argc, char **argv, struct redrive_opts *o)
{
	static const struct option longopts[] = {
	    {"status", required_argument, NULL, 's'},
	    {"code", required_argument, NULL, 'c'},
	    {"tenant", required_argument, NULL, 't'},
	    {"since", required_argument, NULL, 'S'},
	    {"limit", required_argument, NULL, 'l'},
	    {"dry-run", no_argument, NULL, 'n'},
	    {NULL, 0, NULL, 0},
	};
	*o = (struct redrive_opts){.filter = {.status = "failed", .since_ms = INT64_MIN}};
	int c;
	while ((c = getopt_long(argc, argv, "s:c:t:S:l:n", longopts, NULL)) != -1) {
		switch (c) {
		case 's':
			if (strcmp(optarg, "failed") != 0 && strcmp(optarg, "rejected") != 0)
				return bad_option("--status (failed or rejected)", optarg);
			o->filter.status = optarg;
			break;
		case 'c':
			o->filter.code = optarg;
			break;
		case 't':
			o->filter.tenant = optarg;
			break;
		case 'S':
			if (!redrive_parse_time(optarg, &o->filter.since_ms))
				return bad_option("--since (RFC 3339, e.g. 2026-12-02T10:00:00Z)",
				                  optarg);
			break;
		case 'l':
			if (!ctl_parse_count(optarg, 1, INT64_MAX, &o->limit))
				return bad_option("--limit (a whole number >= 1)", optarg);
			break;
		case 'n':
			o->dry_run = true;
			break;
		default:
			return CTL_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "chatprovctl redrive: unexpected argument '%s'\n", argv[optind]);
		return CTL_USAGE;
	}
	return CTL_OK;
}

static int run(struct redrive_run *r)
{
	if (!r->cfg->kafka.dlq_topic[0]) {
		fprintf(stderr, "chatprovctl redrive: no DLQ: [kafka] dlq_topic is empty\n");
		return CTL_FAILED;
	}
	if (!r->o->dry_run) {
		r->producer = kafka_producer_new(r->cfg, on_delivery, r, r->err, sizeof r->err);
		if (!r->producer) {
			fprintf(stderr, "chatprovctl redrive: %s\n", r->err);
			return CTL_FAILED;
		}
	}
	bool ok = read_dlq(r);
	if (r->producer) {
		rd_kafka_resp_err_t e = rd_kafka_flush(r->producer, FLUSH_TIMEOUT_MS);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR && ok) {
			snprintf(r->err, sizeof r->err, "copies not confirmed: %s",
			         rd_kafka_err2str(e));
			ok = false;
		}
		rd_kafka_destroy(r->producer);
	}
	if (!ok)
		fprintf(stderr, "chatprovctl redrive: %s\n", r->err);
	const char *dlq = r->cfg->kafka.dlq_topic, *input = r->cfg->kafka.input_topic;
	if (r->o->dry_run)
		printf("would move %lld records from %s to %s (dry run: nothing moved)\n",
		       r->matched - r->skipped, dlq, input);
	else
		printf("moved %lld records from %s to %s\n", r->moved - r->delivery_failures, dlq,
		       input);
	if (r->skipped)
		printf("skipped %lld records whose value the DLQ did not keep\n", r->skipped);
	return ok && !r->delivery_failures ? CTL_OK : CTL_FAILED;
}

int ctl_redrive(const char *config_path, int argc, char **argv)
{
	struct redrive_opts o;
	int rc = parse_opts(argc, argv, &o);
	if (rc != CTL_OK)
		return rc;
	struct cfg *cfg = ctl_load_config(config_path);
	if (!cfg)
		return CTL_FAILED;
	struct redrive_run r = {.cfg = cfg, .o = &o};
	rc = run(&r);
	cfg_free(cfg);
	return rc;
}
