/* kafka.c - building librdkafka consumer and producer handles. */
#include "kafka.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

struct kv {
	const char *key;
	const char *value;
};

/* Settings the at-least-once and exactly-one-outcome guarantees rely on. */
static const struct kv consumer_forced[] = {
    {"enable.auto.offset.store", "false"},
};
static const struct kv reader_forced[] = {
    {"enable.auto.offset.store", "false"},
    {"enable.auto.commit", "false"},
    {"enable.partition.eof", "true"},
};
static const struct kv producer_forced[] = {
    {"enable.idempotence", "true"},
    {"acks", "all"},
};

static bool set(rd_kafka_conf_t *conf, const char *key, const char *value, const char *origin,
                char *err, size_t errcap)
{
	char errstr[CP_ERRSTR_SIZE];
	if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) == RD_KAFKA_CONF_OK)
		return true;
	snprintf(err, errcap, "%s: [librdkafka] %s: %s", origin, key, errstr);
	return false;
}

static bool is_forced(const struct kv *forced, size_t n, const char *key)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(forced[i].key, key) == 0)
			return true;
	return false;
}

/* Applies defaults, then the user's entries, then the forced settings. */
static bool apply(rd_kafka_conf_t *conf, const struct cfg *cfg, const struct kv *defaults,
                  size_t n_defaults, const struct kv *forced, size_t n_forced, char *err,
                  size_t errcap)
{
	for (size_t i = 0; i < n_defaults; i++)
		if (!set(conf, defaults[i].key, defaults[i].value, "default", err, errcap))
			return false;
	for (size_t i = 0; i < cfg->n_rdkafka; i++) {
		const struct cfg_rdkafka_entry *e = &cfg->rdkafka[i];
		if (is_forced(forced, n_forced, e->key)) {
			log_warning("%s: [librdkafka] %s is managed by chatprovd and ignored",
			            e->origin, e->key);
			continue;
		}
		if (!set(conf, e->key, e->value, e->origin, err, errcap))
			return false;
	}
	for (size_t i = 0; i < n_forced; i++)
		if (!set(conf, forced[i].key, forced[i].value, "chatprovd", err, errcap))
			return false;
	return true;
}

/* A configuration with defaults, the user's [librdkafka] entries and the forced settings. */
static rd_kafka_conf_t *new_conf(const struct cfg *cfg, const struct kv *defaults,
                                 size_t n_defaults, const struct kv *forced, size_t n_forced,
                                 char *err, size_t errcap)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	if (!conf) {
		snprintf(err, errcap, "out of memory");
		return NULL;
	}
	if (!apply(conf, cfg, defaults, n_defaults, forced, n_forced, err, errcap)) {
		rd_kafka_conf_destroy(conf);
		return NULL;
	}
	return conf;
}

/* librdkafka's own messages go through our log, so journald gets their priority. */
static void on_log(const rd_kafka_t *rk, int level, const char *facility, const char *text)
{
	enum log_level ours = level <= 3   ? LOG_LVL_ERROR
	                      : level == 4 ? LOG_LVL_WARNING
	                      : level == 5 ? LOG_LVL_NOTICE
	                      : level == 6 ? LOG_LVL_INFO
	                                   : LOG_LVL_DEBUG;
	log_msg(ours, "librdkafka %s %s: %s", rd_kafka_name(rk), facility, text);
}

static rd_kafka_t *create(rd_kafka_type_t type, rd_kafka_conf_t *conf, char *err, size_t errcap)
{
	rd_kafka_conf_set_log_cb(conf, on_log);
	char errstr[CP_ERRSTR_SIZE];
	rd_kafka_t *rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
	if (!rk) {
		snprintf(err, errcap, "cannot create Kafka %s: %s",
		         type == RD_KAFKA_CONSUMER ? "consumer" : "producer", errstr);
		rd_kafka_conf_destroy(conf);
	}
	/* On success rd_kafka_new owns conf. */
	return rk;
}

rd_kafka_t *kafka_consumer_new(const struct cfg *cfg, kafka_rebalance_cb *rebalance, void *opaque,
                               char *err, size_t errcap)
{
	const struct kv defaults[] = {
	    {"bootstrap.servers", cfg->kafka.brokers},
	    {"group.id", cfg->kafka.group_id},
	    {"client.id", "chatprovd"},
	    {"partition.assignment.strategy", "cooperative-sticky"},
	    {"auto.offset.reset", "earliest"},
	    {"enable.auto.commit", "true"},
	    {"auto.commit.interval.ms", "1000"},
	    {"enable.partition.eof", "false"},
	    /*
	     * The pre-fetch is the buffer the intake draws from as far as its credit goes:
	     * the 64 MiB default held ~50 MiB of messages and fetch buffers (heaptrack,
	     * 100,000 backlog); 1 MiB starves the workers on the mock broker. Refills must not
	     * wait for the fetch error back-off, which librdkafka 2.0 also applies to a full
	     * queue (500 ms).
	     */
	    {"queued.max.messages.kbytes", "2048"},
	    {"fetch.error.backoff.ms", "20"},
	};
	rd_kafka_conf_t *conf = new_conf(cfg, defaults, CP_ARRAY_LEN(defaults), consumer_forced,
	                                 CP_ARRAY_LEN(consumer_forced), err, errcap);
	if (!conf)
		return NULL;
	rd_kafka_conf_set_rebalance_cb(conf, rebalance);
	rd_kafka_conf_set_opaque(conf, opaque);
	rd_kafka_t *rk = create(RD_KAFKA_CONSUMER, conf, err, errcap);
	if (rk)
		rd_kafka_poll_set_consumer(rk);
	return rk;
}

/*
 * Headroom over max_message_bytes for what the DLQ copy adds to an input message: its
 * reason and source headers plus the record overhead.
 */
#define KAFKA_DLQ_HEADROOM (64 * 1024)

/*
 * A consumer of the daemon's beside the group's: assign() only, nothing committed. Its
 * group.id is the group's plus suffix (it is never joined); fetch_wait_ms bounds how long a
 * fetch waits for records, i.e. how late a reader may see one.
 */
static rd_kafka_t *side_reader_new(const struct cfg *cfg, const char *suffix, const char *client_id,
                                   const char *fetch_wait_ms, char *err, size_t errcap)
{
	char group[CFG_VALUE_MAX + 16];
	snprintf(group, sizeof group, "%s.%s", cfg->kafka.group_id, suffix);
	const struct kv defaults[] = {
	    {"bootstrap.servers", cfg->kafka.brokers},
	    {"group.id", group},
	    {"client.id", client_id},
	    {"auto.offset.reset", "earliest"},
	    {"fetch.wait.max.ms", fetch_wait_ms},
	};
	rd_kafka_conf_t *conf = new_conf(cfg, defaults, CP_ARRAY_LEN(defaults), reader_forced,
	                                 CP_ARRAY_LEN(reader_forced), err, errcap);
	if (!conf)
		return NULL;
	return create(RD_KAFKA_CONSUMER, conf, err, errcap);
}

rd_kafka_t *kafka_reader_new(const struct cfg *cfg, char *err, size_t errcap)
{
	/* A restore or fetch waits for the long poll of the previous one (unassigned but still
	 * in flight): 500 ms by default, per partition and per replay. */
	return side_reader_new(cfg, "state-reader", "chatprovd-state", "10", err, errcap);
}

rd_kafka_t *kafka_limits_reader_new(const struct cfg *cfg, char *err, size_t errcap)
{
	/* A block is a second or more: a read lags behind by a twentieth of one at most. */
	return side_reader_new(cfg, "limits-reader", "chatprovd-limits", "50", err, errcap);
}

rd_kafka_t *kafka_inspector_new(const struct cfg *cfg, char *err, size_t errcap)
{
	const struct kv defaults[] = {
	    {"bootstrap.servers", cfg->kafka.brokers},
	    {"group.id", cfg->kafka.group_id}, /* for its committed offsets; never joined */
	    {"client.id", "chatprovctl"},
	    {"auto.offset.reset", "earliest"},
	    {"fetch.wait.max.ms", "100"},
	};
	rd_kafka_conf_t *conf = new_conf(cfg, defaults, CP_ARRAY_LEN(defaults), reader_forced,
	                                 CP_ARRAY_LEN(reader_forced), err, errcap);
	if (!conf)
		return NULL;
	return create(RD_KAFKA_CONSUMER, conf, err, errcap);
}

rd_kafka_t *kafka_producer_new(const struct cfg *cfg, kafka_delivery_cb *on_delivery, void *opaque,
                               char *err, size_t errcap)
{
	/*
	 * The DLQ copy of a rejected message is as large as the message: librdkafka's default
	 * (1,000,000 bytes) is below the default max_message_bytes (1 MiB), so an oversized
	 * message would be refused locally and stop the daemon.
	 */
	char max_bytes[32];
	snprintf(max_bytes, sizeof max_bytes, "%zu",
	         (size_t)cfg->kafka.max_message_bytes + KAFKA_DLQ_HEADROOM);
	const struct kv defaults[] = {
	    {"bootstrap.servers", cfg->kafka.brokers},
	    {"client.id", "chatprovd"},
	    {"linger.ms", "5"},
	    {"message.timeout.ms", "300000"},
	    {"compression.type", "lz4"},
	    {"message.max.bytes", max_bytes},
	};
	rd_kafka_conf_t *conf = new_conf(cfg, defaults, CP_ARRAY_LEN(defaults), producer_forced,
	                                 CP_ARRAY_LEN(producer_forced), err, errcap);
	if (!conf)
		return NULL;
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_conf_set_opaque(conf, opaque);
	return create(RD_KAFKA_PRODUCER, conf, err, errcap);
}

void kafka_warm_up(rd_kafka_t *producer, const char *topic, int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(producer, topic, NULL);
	if (!rkt)
		return;
	rd_kafka_resp_err_t err = rd_kafka_metadata(producer, 0, rkt, &md, timeout_ms);
	if (err)
		log_warning("metadata of %s: %s", topic, rd_kafka_err2str(err));
	else
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
}

int kafka_partition_count(rd_kafka_t *rk, const char *topic, int timeout_ms)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	if (!rkt)
		return -1;
	int n = -1;
	rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
	if (err)
		log_warning("metadata of %s: %s", topic, rd_kafka_err2str(err));
	else if (md->topic_cnt == 1 && !md->topics[0].err)
		n = md->topics[0].partition_cnt;
	if (md)
		rd_kafka_metadata_destroy(md);
	rd_kafka_topic_destroy(rkt);
	return n;
}

bool kafka_subscribe(rd_kafka_t *consumer, const char *topic, char *err, size_t errcap)
{
	rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
	if (!topics) {
		snprintf(err, errcap, "out of memory");
		return false;
	}
	rd_kafka_topic_partition_list_add(topics, topic, RD_KAFKA_PARTITION_UA);
	rd_kafka_resp_err_t e = rd_kafka_subscribe(consumer, topics);
	rd_kafka_topic_partition_list_destroy(topics);
	if (e) {
		snprintf(err, errcap, "cannot subscribe to %s: %s", topic, rd_kafka_err2str(e));
		return false;
	}
	return true;
}

bool kafka_header_text(const rd_kafka_headers_t *h, const char *name, char *out, size_t cap)
{
	const void *v = NULL;
	size_t n = 0;
	if (!h || !cap || rd_kafka_header_get_last(h, name, &v, &n) != RD_KAFKA_RESP_ERR_NO_ERROR ||
	    !v || n >= cap || memchr(v, '\0', n))
		return false;
	memcpy(out, v, n);
	out[n] = '\0';
	return true;
}

bool kafka_header_has(const rd_kafka_headers_t *h, const char *name)
{
	const void *v;
	size_t n;
	return h && rd_kafka_header_get_last(h, name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR;
}

bool kafka_header_is(const rd_kafka_headers_t *h, const char *name, const char *value)
{
	const void *v = NULL;
	size_t n = 0;
	return h && rd_kafka_header_get_last(h, name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR && v &&
	       n == strlen(value) && memcmp(v, value, n) == 0;
}
