/*
 * test_blockshare.c - a 429's Retry-After shared through [kafka] limits_topic, against
 * librdkafka's in-process mock cluster: two instances (two blockshares, two schedulers) on one
 * topic. A block one writes holds the same tenant on the other and not on itself; a record
 * naming another app, a malformed one and one from the far future are ignored or bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "blockshare.h"
#include "cfg.h"
#include "cptime.h"
#include "mock_kafka.h"
#include "pacer.h"

#define WAIT_MS     (15 * 1000)
#define CONTOSO     "contoso.onmicrosoft.com"
#define FABRIKAM    "fabrikam.onmicrosoft.com"
#define APP         "00000000-0000-0000-0000-00000000c0de"
#define MAX_BLOCK_S 60
/* The Kafka protocol's ListOffsets request (ApiKey 2). */
#define API_LIST_OFFSETS 2

static rd_kafka_t *cluster_owner, *producer;
static rd_kafka_mock_cluster_t *mcluster;
static int topic_seq;

/* One instance: its configuration, scheduler and blockshare. */
struct instance {
	rd_kafka_t *producer; /* its own, new: it knows no topic, as at a daemon's start */
	struct cfg *cfg;
	struct pacer *pacer;
	struct blockshare *share;
};

struct fixture {
	char topic[64];
	struct instance a, b;
};

static int group_setup(void **state)
{
	(void)state;
	mcluster = mock_cluster_start(&cluster_owner);
	producer =
	    mock_client(RD_KAFKA_PRODUCER, rd_kafka_mock_cluster_bootstraps(mcluster), NULL, NULL);
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	rd_kafka_destroy(producer);
	rd_kafka_mock_cluster_destroy(mcluster);
	rd_kafka_destroy(cluster_owner);
	return 0;
}

static void instance_start(struct instance *in, const char *topic)
{
	in->cfg = calloc(1, sizeof *in->cfg);
	assert_non_null(in->cfg);
	struct cfg *c = in->cfg;
	snprintf(c->kafka.brokers, sizeof c->kafka.brokers, "%s",
	         rd_kafka_mock_cluster_bootstraps(mcluster));
	snprintf(c->kafka.group_id, sizeof c->kafka.group_id, "g.%s", topic);
	snprintf(c->kafka.limits_topic, sizeof c->kafka.limits_topic, "%s", topic);
	c->retry.max_elapsed_s = MAX_BLOCK_S;
	c->n_tenants = 2;
	const char *tenants[] = {CONTOSO, FABRIKAM};
	for (size_t i = 0; i < 2; i++) {
		snprintf(c->tenants[i].tenant_id, sizeof c->tenants[i].tenant_id, "%s", tenants[i]);
		snprintf(c->tenants[i].client_id, sizeof c->tenants[i].client_id, "%s", APP);
	}
	struct pacer_limits lim = {20, 200, 10, 0};
	assert_true(pacer_new(&lim, 100, &in->pacer));
	size_t index;
	assert_true(pacer_add_tenant(in->pacer, "contoso", 0, &index));
	assert_true(pacer_add_tenant(in->pacer, "fabrikam", 0, &index));
	in->producer =
	    mock_client(RD_KAFKA_PRODUCER, rd_kafka_mock_cluster_bootstraps(mcluster), NULL, NULL);
	char err[CP_ERRSTR_SIZE];
	if (!blockshare_new(in->cfg, in->producer, in->pacer, NULL, &in->share, err, sizeof err))
		fail_msg("blockshare_new: %s", err);
	assert_non_null(in->share);
}

static void instance_stop(struct instance *in)
{
	blockshare_free(in->share);
	rd_kafka_destroy(in->producer);
	pacer_free(in->pacer);
	free(in->cfg);
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	snprintf(f->topic, sizeof f->topic, "limits.%d", ++topic_seq);
	mock_topic(mcluster, producer, f->topic, 2);
	instance_start(&f->a, f->topic);
	instance_start(&f->b, f->topic);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	instance_stop(&f->a);
	instance_stop(&f->b);
	free(f);
	return 0;
}

/* Polls both instances until tenant is blocked on `on` at now, or the wait ends. */
static bool poll_until_blocked(struct fixture *f, struct instance *on, size_t tenant,
                               int64_t wait_ms)
{
	int64_t until = cptime_mono_ms() + wait_ms;
	while (cptime_mono_ms() < until) {
		blockshare_poll(f->a.share);
		blockshare_poll(f->b.share);
		if (pacer_blocked(on->pacer, tenant, cptime_mono_ms()))
			return true;
		rd_kafka_poll(producer, 10);
	}
	return false;
}

/*
 * Writes a block of `tenant` from instance a until b holds it. A reader starts at the end of
 * the topic, which it learns only with its first fetch: a block written before that is not
 * one it was meant to see, so the write is repeated until one lands after it.
 */
static void share_until_held(struct fixture *f, size_t tenant, int64_t block_ms)
{
	int64_t until = cptime_mono_ms() + WAIT_MS;
	while (cptime_mono_ms() < until) {
		blockshare_publish(tenant, cptime_mono_ms() + block_ms, f->a.share);
		assert_int_equal(rd_kafka_flush(f->a.producer, 5000), RD_KAFKA_RESP_ERR_NO_ERROR);
		if (poll_until_blocked(f, &f->b, tenant, 1000))
			return;
	}
	fail_msg("instance b never held the tenant a shared");
}

/*
 * The first 429 comes in the first second of a backlog, right after start-up: the block
 * written then is read once and at once, with no fetch of the reader before it (it starts
 * at the end the topic had when it was opened, not at an end looked up later).
 */
static void test_the_first_block_after_start_is_read_at_once(void **state)
{
	struct fixture *f = *state;
	/* An offset lookup from now on fails once and is retried later: a reader that still had
	 * to look up its end (OFFSET_END) may find it after the block below and skip it. (Racy:
	 * the lookup may have happened already; the writer's check below is deterministic.) */
	rd_kafka_mock_push_request_errors(mcluster, API_LIST_OFFSETS, 1,
	                                  RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION);
	int64_t written = cptime_mono_ms();
	blockshare_publish(0, written + 3000, f->a.share);
	assert_int_equal(rd_kafka_flush(f->a.producer, 5000), RD_KAFKA_RESP_ERR_NO_ERROR);
	bool held = poll_until_blocked(f, &f->b, 0, 2000);
	rd_kafka_mock_clear_request_errors(mcluster, API_LIST_OFFSETS);
	assert_true(held);
	/* A writer that learns the topic only with its first record waits for librdkafka's
	 * next topic scan, up to a second, while Graph's window runs. */
	int64_t took = cptime_mono_ms() - written;
	print_message("first block held %lld ms after it was written\n", (long long)took);
	assert_true(took < 250);
}

static struct pacer_tenant_stats stats_of(struct pacer *s, size_t tenant)
{
	struct pacer_tenant_stats st;
	assert_true(pacer_tenant_stats(s, tenant, &st));
	return st;
}

static void test_a_block_holds_the_same_tenant_on_the_other_instance_only(void **state)
{
	struct fixture *f = *state;
	share_until_held(f, 1, 3000);
	int64_t now = cptime_mono_ms();
	assert_true(pacer_blocked(f->b.pacer, 1, now));
	assert_false(pacer_blocked(f->b.pacer, 0, now)); /* contoso: another tenant's limit */
	/* a read its own record and skipped it: its scheduler was never told by a 429 here */
	assert_false(pacer_blocked(f->a.pacer, 1, now));
	/* ... until the block's end, as b's own 429 would; and no rate cut: b drew no 429 */
	struct pacer_tenant_stats st = stats_of(f->b.pacer, 1);
	assert_true(st.blocked_until_ms > now && st.blocked_until_ms <= now + 3000);
	assert_int_equal(st.throttled, 0);
	assert_true(st.current_rate == 20);
	assert_false(pacer_blocked(f->b.pacer, 1, now + 3001));
}

static void produce_raw(const char *topic, const char *key, const char *value)
{
	rd_kafka_resp_err_t err =
	    rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
	                      RD_KAFKA_V_VALUE((void *)value, strlen(value)),
	                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
	assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
	assert_int_equal(rd_kafka_flush(producer, 5000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static void test_foreign_malformed_and_far_future_records(void **state)
{
	struct fixture *f = *state;
	share_until_held(f, 1, 500); /* both readers are past their start now */
	char future[32];
	snprintf(future, sizeof future, "%lld", (long long)(cptime_wall_ms() + 24 * 3600 * 1000LL));
	produce_raw(f->topic, "another-app/" CONTOSO, future);
	produce_raw(f->topic, APP "/" CONTOSO, "in a while");
	produce_raw(f->topic, APP "/" CONTOSO, "");
	assert_false(poll_until_blocked(f, &f->b, 0, 1500));
	/* A day's block from a broken writer holds no longer than [retry] max_elapsed_s. */
	produce_raw(f->topic, APP "/" CONTOSO, future);
	assert_true(poll_until_blocked(f, &f->b, 0, WAIT_MS));
	int64_t now = cptime_mono_ms();
	int64_t until = stats_of(f->b.pacer, 0).blocked_until_ms;
	assert_true(until > now + (MAX_BLOCK_S - 5) * 1000 && until <= now + MAX_BLOCK_S * 1000);
}

/*
 * No limits_topic, no sharing. (A topic that does not exist is the other way to it, checked
 * at start; librdkafka's mock cluster creates every topic a client asks about, so it is not
 * tested here.)
 */
static void test_no_topic_no_share(void **state)
{
	(void)state;
	struct cfg *c = calloc(1, sizeof *c);
	assert_non_null(c);
	snprintf(c->kafka.brokers, sizeof c->kafka.brokers, "%s",
	         rd_kafka_mock_cluster_bootstraps(mcluster));
	snprintf(c->kafka.group_id, sizeof c->kafka.group_id, "g.none");
	struct blockshare *share = (void *)1;
	char err[CP_ERRSTR_SIZE];
	assert_true(blockshare_new(c, producer, NULL, NULL, &share, err, sizeof err));
	assert_null(share);
	blockshare_poll(NULL);
	blockshare_reload(NULL, c);
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_the_first_block_after_start_is_read_at_once, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(
	        test_a_block_holds_the_same_tenant_on_the_other_instance_only, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_foreign_malformed_and_far_future_records, setup,
	                                    teardown),
	    cmocka_unit_test(test_no_topic_no_share),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
