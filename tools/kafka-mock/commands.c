/*
 * commands.c - the stdin command language of kafka-mock.
 *
 * One command per line, words separated by blanks; every command gets exactly one reply
 * line, "OK ..." or "ERR <reason>", so a test can drive the mock like a tiny RPC server.
 * Arguments are validated here, before librdkafka sees them: the mock API aborts or
 * silently ignores some bad input (e.g. a negative partition count) instead of failing.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmock.h"

#define MAX_WORDS 8

struct command {
	const char *name;
	int words; /* including the command name */
	const char *usage;
	void (*run)(struct kmock *km, char **w, char *reply, size_t size);
};

static void reply_ok(char *reply, size_t size, const char *fmt, ...) CP_PRINTF(3, 4);
static void reply_err(char *reply, size_t size, const char *fmt, ...) CP_PRINTF(3, 4);
static void reply_vfmt(char *reply, size_t size, const char *prefix, const char *fmt, va_list ap)
    CP_PRINTF(4, 0);

static void reply_vfmt(char *reply, size_t size, const char *prefix, const char *fmt, va_list ap)
{
	size_t n = (size_t)snprintf(reply, size, "%s", prefix);

	if (n < size)
		vsnprintf(reply + n, size - n, fmt, ap);
	/* The reply is one line whatever the arguments contained. */
	for (char *p = reply; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
}

static void reply_ok(char *reply, size_t size, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	reply_vfmt(reply, size, "OK ", fmt, ap);
	va_end(ap);
}

static void reply_err(char *reply, size_t size, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	reply_vfmt(reply, size, "ERR ", fmt, ap);
	va_end(ap);
}

bool kmock_parse_long(const char *s, long min, long max, long *out)
{
	char *end;
	long v;

	if (!s || !*s)
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

static bool parse_broker(struct kmock *km, const char *s, int32_t *id, char *reply, size_t size)
{
	long v;

	if (!kmock_parse_long(s, 1, km->broker_cnt, &v)) {
		reply_err(reply, size, "broker id must be 1..%d, got '%s'", km->broker_cnt, s);
		return false;
	}
	*id = (int32_t)v;
	return true;
}

/* An error code by number ("16") or by librdkafka's name ("NOT_COORDINATOR"); only codes
 * librdkafka knows are accepted, so a typo cannot inject a meaningless error. */
static bool parse_error_code(const char *s, rd_kafka_resp_err_t *out)
{
	const struct rd_kafka_err_desc *descs;
	size_t cnt;
	long num = 0;
	bool numeric = kmock_parse_long(s, -1000, 1000, &num);

	rd_kafka_get_err_descs(&descs, &cnt);
	for (size_t i = 0; i < cnt; i++) {
		if (!descs[i].name)
			continue;
		if (numeric ? descs[i].code == num : strcmp(descs[i].name, s) == 0) {
			*out = descs[i].code;
			return true;
		}
	}
	return false;
}

static bool valid_topic_name(const char *name)
{
	size_t len = strlen(name);

	if (len == 0 || len > KMOCK_TOPIC_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
		return false;
	return strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
	       len;
}

bool kmock_parse_topic_spec(const char *spec, char *name, size_t name_size, int *partitions,
                            char *err, size_t err_size)
{
	const char *colon = strchr(spec, ':');
	char count[32];
	const char *flags;
	size_t name_len, count_len;
	long v;

	if (!colon) {
		snprintf(err, err_size, "topic '%s': expected NAME:PARTITIONS", spec);
		return false;
	}
	name_len = (size_t)(colon - spec);
	flags = strchr(colon + 1, ':');
	count_len = flags ? (size_t)(flags - colon - 1) : strlen(colon + 1);
	if (name_len >= name_size || count_len >= sizeof(count)) {
		snprintf(err, err_size, "topic '%s': name or partition count too long", spec);
		return false;
	}
	memcpy(name, spec, name_len);
	name[name_len] = '\0';
	memcpy(count, colon + 1, count_len);
	count[count_len] = '\0';
	if (!valid_topic_name(name)) {
		snprintf(err, err_size, "topic '%s': invalid topic name", spec);
		return false;
	}
	if (!kmock_parse_long(count, 1, KMOCK_PARTITIONS_MAX, &v)) {
		snprintf(err, err_size, "topic '%s': partitions must be 1..%d", spec,
		         KMOCK_PARTITIONS_MAX);
		return false;
	}
	if (flags && strcmp(flags + 1, "compact") != 0) {
		snprintf(err, err_size, "topic '%s': the only flag is 'compact'", spec);
		return false;
	}
	*partitions = (int)v;
	return true;
}

bool kmock_create_topic(struct kmock *km, const char *name, int partitions, char *err,
                        size_t err_size)
{
	/* As many replicas as brokers (Kafka's usual 3 at most), so that a partition has
	 * followers to move to when a test takes its leader down. */
	int replicas = km->broker_cnt < 3 ? km->broker_cnt : 3;
	rd_kafka_resp_err_t rc;

	if (!valid_topic_name(name)) {
		snprintf(err, err_size, "invalid topic name '%s'", name);
		return false;
	}
	rc = rd_kafka_mock_topic_create(km->mcluster, name, partitions, replicas);
	if (rc) {
		snprintf(err, err_size, "creating topic '%s': %s", name, rd_kafka_err2str(rc));
		return false;
	}
	return true;
}

static void cmd_broker(struct kmock *km, char **w, char *reply, size_t size)
{
	bool down = !strcmp(w[1], "down");
	rd_kafka_resp_err_t rc;
	int32_t id;

	if (!down && strcmp(w[1], "up") != 0) {
		reply_err(reply, size, "usage: broker down|up ID");
		return;
	}
	if (!parse_broker(km, w[2], &id, reply, size))
		return;
	rc = down ? rd_kafka_mock_broker_set_down(km->mcluster, id)
	          : rd_kafka_mock_broker_set_up(km->mcluster, id);
	if (rc)
		reply_err(reply, size, "broker %d: %s", (int)id, rd_kafka_err2str(rc));
	else
		reply_ok(reply, size, "broker %d %s", (int)id, down ? "down" : "up");
}

static void cmd_rtt(struct kmock *km, char **w, char *reply, size_t size)
{
	rd_kafka_resp_err_t rc;
	int32_t id;
	long ms;

	if (!parse_broker(km, w[1], &id, reply, size))
		return;
	if (!kmock_parse_long(w[2], 0, 3600 * 1000, &ms)) {
		reply_err(reply, size, "rtt must be 0..3600000 ms, got '%s'", w[2]);
		return;
	}
	rc = rd_kafka_mock_broker_set_rtt(km->mcluster, id, (int)ms);
	if (rc)
		reply_err(reply, size, "broker %d: %s", (int)id, rd_kafka_err2str(rc));
	else
		reply_ok(reply, size, "broker %d rtt %ld ms", (int)id, ms);
}

static bool parse_api_key(const char *s, int16_t *out, char *reply, size_t size)
{
	long v;

	/* Kafka's API keys are small; 0..1000 leaves room for any future ones. */
	if (!kmock_parse_long(s, 0, 1000, &v)) {
		reply_err(reply, size, "api key must be a number 0..1000, got '%s'", s);
		return false;
	}
	*out = (int16_t)v;
	return true;
}

/* "ERR[,ERR...]" into errs; false (reply filled) if a code is unknown or too many. */
static bool parse_error_list(char *list, rd_kafka_resp_err_t *errs, size_t *cnt, char *reply,
                             size_t size)
{
	char *save = NULL;

	*cnt = 0;
	for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (*cnt == KMOCK_PUSH_MAX) {
			reply_err(reply, size, "at most %d errors per command", KMOCK_PUSH_MAX);
			return false;
		}
		if (!parse_error_code(tok, &errs[*cnt])) {
			reply_err(reply, size, "unknown error code '%s'", tok);
			return false;
		}
		(*cnt)++;
	}
	return true;
}

static void cmd_push_errors(struct kmock *km, char **w, char *reply, size_t size)
{
	rd_kafka_resp_err_t errs[KMOCK_PUSH_MAX];
	size_t cnt;
	int16_t api;

	if (!parse_api_key(w[1], &api, reply, size) ||
	    !parse_error_list(w[2], errs, &cnt, reply, size))
		return;
	if (cnt == 0) {
		reply_err(reply, size, "usage: push-errors APIKEY ERR[,ERR...]");
		return;
	}
	rd_kafka_mock_push_request_errors_array(km->mcluster, api, cnt, errs);
	reply_ok(reply, size, "pushed %zu error(s) for api key %d", cnt, (int)api);
}

/* Like push-errors, for the requests one broker receives (e.g. the leader of one topic). */
static void cmd_broker_errors(struct kmock *km, char **w, char *reply, size_t size)
{
	rd_kafka_resp_err_t errs[KMOCK_PUSH_MAX];
	size_t cnt;
	int32_t id;
	int16_t api;

	if (!parse_broker(km, w[1], &id, reply, size) || !parse_api_key(w[2], &api, reply, size) ||
	    !parse_error_list(w[3], errs, &cnt, reply, size))
		return;
	if (cnt == 0) {
		reply_err(reply, size, "usage: broker-errors ID APIKEY ERR[,ERR...]");
		return;
	}
	for (size_t i = 0; i < cnt; i++) {
		rd_kafka_resp_err_t rc = rd_kafka_mock_broker_push_request_error_rtts(
		    km->mcluster, id, api, 1, errs[i], 0);
		if (rc) {
			reply_err(reply, size, "%s", rd_kafka_err2str(rc));
			return;
		}
	}
	reply_ok(reply, size, "pushed %zu error(s) for api key %d on broker %d", cnt, (int)api,
	         (int)id);
}

static void cmd_clear_errors(struct kmock *km, char **w, char *reply, size_t size)
{
	int16_t api;

	if (!parse_api_key(w[1], &api, reply, size))
		return;
	rd_kafka_mock_clear_request_errors(km->mcluster, api);
	reply_ok(reply, size, "cleared errors for api key %d", (int)api);
}

static void cmd_create_topic(struct kmock *km, char **w, char *reply, size_t size)
{
	char err[CP_ERRSTR_SIZE];
	long parts;

	if (!kmock_parse_long(w[2], 1, KMOCK_PARTITIONS_MAX, &parts)) {
		reply_err(reply, size, "partitions must be 1..%d, got '%s'", KMOCK_PARTITIONS_MAX,
		          w[2]);
		return;
	}
	if (!kmock_create_topic(km, w[1], (int)parts, err, sizeof(err)))
		reply_err(reply, size, "%s", err);
	else
		reply_ok(reply, size, "topic %s partitions %ld", w[1], parts);
}

static void cmd_coordinator(struct kmock *km, char **w, char *reply, size_t size)
{
	rd_kafka_resp_err_t rc;
	int32_t id;

	if (strcmp(w[1], "group") != 0 && strcmp(w[1], "transaction") != 0) {
		reply_err(reply, size, "usage: coordinator group|transaction NAME BROKERID");
		return;
	}
	if (!parse_broker(km, w[3], &id, reply, size))
		return;
	rc = rd_kafka_mock_coordinator_set(km->mcluster, w[1], w[2], id);
	if (rc)
		reply_err(reply, size, "coordinator: %s", rd_kafka_err2str(rc));
	else
		reply_ok(reply, size, "%s %s coordinator %d", w[1], w[2], (int)id);
}

static void cmd_leader(struct kmock *km, char **w, char *reply, size_t size)
{
	rd_kafka_resp_err_t rc;
	int32_t id;
	long part;

	if (!kmock_parse_long(w[2], 0, KMOCK_PARTITIONS_MAX - 1, &part)) {
		reply_err(reply, size, "bad partition '%s'", w[2]);
		return;
	}
	if (!parse_broker(km, w[3], &id, reply, size))
		return;
	rc = rd_kafka_mock_partition_set_leader(km->mcluster, w[1], (int32_t)part, id);
	if (rc)
		reply_err(reply, size, "leader: %s", rd_kafka_err2str(rc));
	else
		reply_ok(reply, size, "%s [%ld] leader %d", w[1], part, (int)id);
}

static void cmd_bootstrap(struct kmock *km, char **w, char *reply, size_t size)
{
	(void)w;
	reply_ok(reply, size, "%s", rd_kafka_mock_cluster_bootstraps(km->mcluster));
}

static void cmd_quit(struct kmock *km, char **w, char *reply, size_t size)
{
	(void)km;
	(void)w;
	reply_ok(reply, size, "bye");
}

static const struct command commands[] = {
    {"broker", 3, "broker down|up ID", cmd_broker},
    {"rtt", 3, "rtt ID MS", cmd_rtt},
    {"push-errors", 3, "push-errors APIKEY ERR[,ERR...]", cmd_push_errors},
    {"broker-errors", 4, "broker-errors ID APIKEY ERR[,ERR...]", cmd_broker_errors},
    {"clear-errors", 2, "clear-errors APIKEY", cmd_clear_errors},
    {"create-topic", 3, "create-topic NAME PARTITIONS", cmd_create_topic},
    {"coordinator", 4, "coordinator group|transaction NAME BROKERID", cmd_coordinator},
    {"leader", 4, "leader TOPIC PARTITION BROKERID", cmd_leader},
    {"bootstrap", 1, "bootstrap", cmd_bootstrap},
    {"quit", 1, "quit", cmd_quit},
};

static int split_words(char *line, char **w)
{
	char *save = NULL;
	int n = 0;

	for (char *tok = strtok_r(line, " \t\r", &save); tok;
	     tok = strtok_r(NULL, " \t\r", &save)) {
		if (n == MAX_WORDS)
			return -1;
		w[n++] = tok;
	}
	return n;
}

enum kmock_verdict kmock_command(struct kmock *km, char *line, char *reply, size_t reply_size)
{
	char *w[MAX_WORDS];
	int n = split_words(line, w);

	if (n <= 0) {
		reply_err(reply, reply_size, n == 0 ? "empty command" : "too many words");
		return KMOCK_CONTINUE;
	}
	for (size_t i = 0; i < CP_ARRAY_LEN(commands); i++) {
		const struct command *c = &commands[i];

		if (strcmp(c->name, w[0]) != 0)
			continue;
		if (n != c->words) {
			reply_err(reply, reply_size, "usage: %s", c->usage);
			return KMOCK_CONTINUE;
		}
		c->run(km, w, reply, reply_size);
		return c->run == cmd_quit ? KMOCK_QUIT : KMOCK_CONTINUE;
	}
	reply_err(reply, reply_size, "unknown command '%s'", w[0]);
	return KMOCK_CONTINUE;
}
