/*
 * test_worker.c - an HTTP worker against a tiny Graph and token endpoint (libmicrohttpd on
 * 127.0.0.1), with hooks that model the pipeline's partition ownership (a generation and a
 * count of POSTs in flight, sequentially consistent atomics, as lib/pipeline.c keeps them).
 *
 * The ownership race (issue 13, item 7): a revoke changes the generation, then waits until
 * no POST of the partition is counted in flight, and only then lets the next owner restore
 * the state and look up what may exist. A POST that leaves after that wait ended can be
 * missed by the next owner's lookup: a group chat twice. To make the window observable, the
 * test runs the revoke synchronously inside the worker's hooks, right after the n-th hook
 * call made for the job, for every n: each place between the worker's ownership check and
 * its POST is tried, deterministically.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <microhttpd.h>

#include "auth.h"
#include "cfg.h"
#include "cptime.h"
#include "event.h"
#include "graphreq.h"
#include "job.h"
#include "log.h"
#include "pacer.h"
#include "worker.h"

#define CHAT_ID "19:made-by-op@thread.v2"
#define WEB_URL "https://teams.microsoft.com/l/chat/19%3Amade-by-op%40thread.v2/0"
#define CREATED "2026-12-02T10:00:00.000Z"

/* ---- the server ---- */

struct srv {
	struct MHD_Daemon *d;
	unsigned port;
	bool async;            /* POST /chats answers 202 with an operation */
	atomic_int posts;      /* POST /chats received */
	atomic_int chat_reads; /* GET /chats('…') received */
	atomic_llong last_post_ms; /* when the last POST /chats arrived (cptime_mono_ms) */
};

static struct srv srv;
static char tmpdir[] = "/tmp/test_worker.XXXXXX";

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body,
                             const char *location)
{
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(r, "Content-Type", "application/json");
	if (location)
		MHD_add_response_header(r, "Location", location);
	enum MHD_Result rc = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return rc;
}

static const char chat_json[] =
    "{\"id\":\"" CHAT_ID "\",\"chatType\":\"group\",\"topic\":"
    "\"t\",\"webUrl\":\"" WEB_URL "\",\"createdDateTime\":\"" CREATED "\"}";

static enum MHD_Result answer(struct MHD_Connection *c, const char *url, const char *method)
{
	if (strstr(url, "/oauth2/v2.0/token"))
		return reply(
		    c, 200,
		    "{\"token_type\":\"Bearer\",\"expires_in\":3599,\"access_token\":\"tok\"}",
		    NULL);
	if (strcmp(method, "POST") == 0 && strcmp(url, "/beta/chats") == 0) {
		atomic_fetch_add(&srv.posts, 1);
		atomic_store(&srv.last_post_ms, cptime_mono_ms());
		if (srv.async)
			return reply(c, 202, "", "/chats('" CHAT_ID "')/operations('op-1')");
		return reply(c, 201, chat_json, NULL);
	}
	if (strcmp(url, "/beta/chats('" CHAT_ID "')/operations('op-1')") == 0)
		return reply(c, 200,
		             "{\"id\":\"op-1\",\"status\":\"succeeded\",\"attemptsCount\":1,"
		             "\"targetResourceId\":\"" CHAT_ID "\"}",
		             NULL);
	if (strcmp(url, "/beta/chats('" CHAT_ID "')") == 0) {
		atomic_fetch_add(&srv.chat_reads, 1);
		return reply(c, 200, chat_json, NULL);
	}
	return reply(c, 404, "{\"error\":{\"code\":\"NotFound\",\"message\":\"no\"}}", NULL);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls)
{
	(void)cls;
	(void)version;
	(void)data;
	if (!*con_cls) {
		*con_cls = c; /* the headers; the body (if any) comes next */
		return MHD_YES;
	}
	if (*data_size) {
		*data_size = 0; /* the body is not looked at */
		return MHD_YES;
	}
	return answer(c, url, method);
}

/* ---- the pipeline's side, modelled ---- */

/*
 * What pipeline.c keeps per partition, with the same atomics: the generation (changed by a
 * revoke) and the POSTs in flight (post_begin/post_end). A revoke is over once it has seen no
 * POST in flight after changing the generation; from then on the next owner may look up.
 */
struct owner {
	atomic_ullong generation;
	atomic_uint posting;
	pthread_mutex_t mu; /* guards what follows: the hooks run on the worker thread */
	pthread_cond_t cond;
	int hook_calls;   /* hook calls made for the job so far */
	int revoke_after; /* run the revoke right after this hook call (0: never) */
	bool revoke_pending;
	bool revoke_over;
	int posts_at_revoke;         /* POSTs the server had received when the revoke was over */
	int64_t accepted_op_started; /* op_started_mono_ms seen by on_accepted */
	struct job *done;            /* handed back by on_done */
	struct pacer *pacer;         /* for throttle_ms */
	int64_t throttle_ms; /* > 0: the next post_begin reports a 429 with this Retry-After */
	int64_t blocked_until; /* the end of that Retry-After */
};

static struct owner own;

/* own.mu held. */
static void revoke_check(void)
{
	if (own.revoke_pending && atomic_load(&own.posting) == 0) {
		own.revoke_pending = false;
		own.revoke_over = true;
		own.posts_at_revoke = atomic_load(&srv.posts);
	}
}

/* After each hook call: the revoke lands here when its turn has come. */
static void after_hook(void)
{
	pthread_mutex_lock(&own.mu);
	if (++own.hook_calls == own.revoke_after) {
		atomic_fetch_add(&own.generation, 1);
		own.revoke_pending = true;
		revoke_check();
	}
	pthread_mutex_unlock(&own.mu);
}

static bool is_current(const struct job *job, void *arg)
{
	(void)arg;
	bool current = atomic_load(&own.generation) == job->generation;
	after_hook();
	return current;
}

static void post_begin(int32_t partition, void *arg)
{
	(void)partition;
	(void)arg;
	pthread_mutex_lock(&own.mu);
	if (own.throttle_ms > 0) {
		/* Another request's 429 comes back after this job was taken, before it is sent. */
		int64_t now = cptime_mono_ms();
		pacer_on_result(own.pacer, 0, PACER_THROTTLED, own.throttle_ms, now);
		own.blocked_until = now + own.throttle_ms;
		own.throttle_ms = 0;
	}
	pthread_mutex_unlock(&own.mu);
	atomic_fetch_add(&own.posting, 1);
	after_hook();
}

static void post_end(int32_t partition, void *arg)
{
	(void)partition;
	(void)arg;
	atomic_fetch_sub(&own.posting, 1);
	pthread_mutex_lock(&own.mu);
	revoke_check(); /* a waiting revoke ends when the last POST is out */
	pthread_mutex_unlock(&own.mu);
}

static void on_accepted(struct job *job, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&own.mu);
	own.accepted_op_started = job->op_started_mono_ms;
	pthread_mutex_unlock(&own.mu);
}

static void on_done(struct job *job, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&own.mu);
	own.done = job;
	pthread_cond_signal(&own.cond);
	pthread_mutex_unlock(&own.mu);
}

/* ---- fixtures ---- */

struct fixture {
	struct cfg *cfg;
	struct auth *auth;
	struct pacer *pacer;
	struct worker *worker;
};

static void write_file(const char *name, const char *content, char *path, size_t cap)
{
	snprintf(path, cap, "%s/%s", tmpdir, name);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(content, f);
	fclose(f);
}

static struct cfg *load_cfg(void)
{
	char secret[256], path[256], text[2048], err[512];
	write_file("secret", "s3cret\n", secret, sizeof secret);
	snprintf(text, sizeof text,
	         "[kafka]\nbrokers = 127.0.0.1:9\ngroup_id = g\ninput_topic = in\n"
	         "output_topic = out\n"
	         "[graph]\nbase_url = http://127.0.0.1:%u\napi_version = beta\n"
	         "request_timeout_s = 5\nconnect_timeout_s = 2\n"
	         "[auth]\ntenant_id = contoso.onmicrosoft.com\n"
	         "client_id = 00000000-0000-0000-0000-000000000001\nclient_secret_file = %s\n"
	         "authority_url = http://127.0.0.1:%u\n"
	         "[operations]\npoll_interval_s = 0.05\ntimeout_s = 30\n",
	         srv.port, secret, srv.port);
	write_file("chatprovd.conf", text, path, sizeof path);
	struct cfg *cfg = NULL;
	if (!cfg_load(path, &cfg, err, sizeof err))
		fail_msg("cfg_load: %s", err);
	return cfg;
}

static int setup(void **state)
{
	if (!mkdtemp(tmpdir) || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -1;
	log_init("test_worker");
	srv.d = MHD_start_daemon(
	    MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL, handler,
	    NULL, MHD_OPTION_SOCK_ADDR,
	    &(struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)},
	    MHD_OPTION_END);
	if (!srv.d)
		return -1;
	srv.port = MHD_get_daemon_info(srv.d, MHD_DAEMON_INFO_BIND_PORT)->port;
	pthread_mutex_init(&own.mu, NULL);
	pthread_cond_init(&own.cond, NULL);

	struct fixture *f = calloc(1, sizeof *f);
	char err[512];
	f->cfg = load_cfg();
	struct pacer_limits lim = {.per_tenant_limit = 1000, .global_limit = 1000, .window_s = 10};
	size_t tenant;
	if (!auth_new(f->cfg, &f->auth, err, sizeof err) || !auth_start(f->auth) ||
	    !pacer_new(&lim, 100, &f->pacer) ||
	    !pacer_add_tenant(f->pacer, "default", 1000, &tenant))
		return -1;
	struct worker_conf wc = {
	    .cfg = f->cfg,
	    .policy = {.retry = {.max_attempts = 3,
	                         .base_delay_ms = 10,
	                         .max_delay_ms = 100,
	                         .max_elapsed_ms = 10000},
	               .poll_interval_ms = 50,
	               .op_timeout_ms = 30000,
	               .group_chat_lookup = true},
	    .max_in_flight = 4,
	    .pacer = f->pacer,
	    .auth = f->auth,
	    .on_done = on_done,
	    .hooks = {.is_current = is_current,
	              .post_begin = post_begin,
	              .post_end = post_end,
	              .on_accepted = on_accepted},
	};
	if (!worker_new(&wc, &f->worker) || !worker_start(f->worker))
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	char cmd[128];
	worker_free(f->worker);
	pacer_free(f->pacer);
	auth_free(f->auth);
	cfg_free(f->cfg);
	free(f);
	MHD_stop_daemon(srv.d);
	curl_global_cleanup();
	snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

/* A group-chat job of the current generation. */
static struct job *group_job(const struct cfg *cfg)
{
	static const char ev_json[] =
	    "{\"id\":\"race-1\",\"chatType\":\"group\",\"topic\":\"t\",\"members\":["
	    "{\"userId\":\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},"
	    "{\"userId\":\"3626a173-f2bc-4883-bcf7-01514c3bfb82\"}]}";
	char reason[EVENT_REASON_SIZE], bind_root[CFG_VALUE_MAX + 16];
	struct job *job = calloc(1, sizeof *job);
	assert_non_null(job);
	assert_true(event_decode(ev_json, strlen(ev_json), NULL, &job->ev, reason, sizeof reason));
	snprintf(bind_root, sizeof bind_root, "%s/beta", cfg->graph.graph_root);
	job->body = graphreq_chat_body(job->ev, bind_root);
	assert_non_null(job->body);
	assert_true(graphreq_client_request_id(job->ev->id, job->client_request_id));
	job->generation = atomic_load(&own.generation);
	job->received_wall_ms = cptime_wall_ms();
	return job;
}

/* Hands the job to the worker and waits until it comes back (10 s at most). */
static struct job *run(struct fixture *f, struct job *job)
{
	int64_t now = cptime_mono_ms();
	pthread_mutex_lock(&own.mu);
	own.done = NULL;
	pthread_mutex_unlock(&own.mu);
	assert_true(pacer_push(f->pacer, 0, job, now, now));
	worker_wakeup(f->worker);
	int64_t end = now + 10000;
	pthread_mutex_lock(&own.mu);
	while (!own.done && cptime_mono_ms() < end) {
		pthread_mutex_unlock(&own.mu);
		usleep(2000);
		pthread_mutex_lock(&own.mu);
	}
	struct job *done = own.done;
	pthread_mutex_unlock(&own.mu);
	assert_non_null(done);
	return done;
}

/* Waits until the auth thread holds a token, so hook calls are the POST's only. */
static void wait_token(struct fixture *f)
{
	char tok[AUTH_TOKEN_BUF];
	int64_t end = cptime_mono_ms() + 5000;
	while (auth_get_token(f->auth, 0, tok, sizeof tok, NULL) != AUTH_OK &&
	       cptime_mono_ms() < end)
		usleep(5000);
	assert_int_equal(auth_get_token(f->auth, 0, tok, sizeof tok, NULL), AUTH_OK);
}

/* ---- tests ---- */

/*
 * For n = 1, 2, ...: a revoke runs right after the worker's n-th hook call for a group-chat
 * POST. Whenever that revoke is over (it saw no POST in flight after changing the
 * generation), no POST may reach Graph afterwards: either the worker abandoned the job, or
 * the revoke waited for the POST to be out. The last n lets the POST go before any revoke.
 */
static void test_revoke_between_check_and_post(void **state)
{
	struct fixture *f = *state;
	srv.async = false;
	wait_token(f);
	bool posted_unrevoked = false;
	for (int n = 1; n <= 6 && !posted_unrevoked; n++) {
		pthread_mutex_lock(&own.mu);
		own.hook_calls = 0;
		own.revoke_after = n;
		own.revoke_pending = own.revoke_over = false;
		pthread_mutex_unlock(&own.mu);
		int posts_before = atomic_load(&srv.posts);
		struct job *job = run(f, group_job(f->cfg));
		usleep(100 * 1000); /* a POST that would still leave has time to arrive */
		int posts = atomic_load(&srv.posts) - posts_before;
		pthread_mutex_lock(&own.mu);
		bool over = own.revoke_over, pending = own.revoke_pending;
		int posts_at_revoke = own.posts_at_revoke;
		bool revoked = own.revoke_after <= own.hook_calls;
		pthread_mutex_unlock(&own.mu);
		print_message("revoke after hook call %d: job %s, %d POST(s), revoke %s\n", n,
		              job->status == JOB_ABANDONED ? "abandoned" : "finished", posts,
		              over ? "over" : (pending ? "waiting" : "none"));
		if (over)
			assert_int_equal(atomic_load(&srv.posts), posts_at_revoke);
		assert_int_equal(atomic_load(&own.posting), 0);
		if (job->status == JOB_ABANDONED) {
			assert_int_equal(posts, 0);
		} else {
			assert_int_equal(job->status, JOB_SUCCEEDED);
			assert_int_equal(posts, 1);
			posted_unrevoked = !revoked;
		}
		job_free(job);
	}
	assert_true(posted_unrevoked); /* every place before the POST was tried */
}

/*
 * A 202: the operation is recorded (on_accepted) with its real start, not 0 (which a
 * restarted instance read as "started at boot", past any deadline); when it succeeds the
 * chat is read back, so the result has its webUrl and createdDateTime like a 201's.
 */
static void test_operation_start_and_chat(void **state)
{
	struct fixture *f = *state;
	srv.async = true;
	wait_token(f);
	pthread_mutex_lock(&own.mu);
	own.revoke_after = 0;
	own.accepted_op_started = -1;
	pthread_mutex_unlock(&own.mu);
	int64_t before = cptime_mono_ms();
	int reads = atomic_load(&srv.chat_reads);
	struct job *job = run(f, group_job(f->cfg));
	pthread_mutex_lock(&own.mu);
	int64_t started = own.accepted_op_started;
	pthread_mutex_unlock(&own.mu);
	assert_true(started >= before);
	assert_true(started <= cptime_mono_ms());
	assert_int_equal(job->status, JOB_SUCCEEDED);
	assert_int_equal(job->attempts, 1);
	assert_string_equal(job->chat_id, CHAT_ID);
	assert_string_equal(job->op_status, "succeeded");
	assert_non_null(job->chat_web_url);
	assert_string_equal(job->chat_web_url, WEB_URL);
	assert_string_equal(job->chat_created, CREATED);
	assert_int_equal(atomic_load(&srv.chat_reads), reads + 1);
	job_free(job);
}

/*
 * A 429 that blocks the tenant after the scheduler handed a job out, before the POST went on
 * the wire: the POST is held until the Retry-After ends, then sent once, and the hold is not
 * counted as an attempt (issue 15, item 2).
 */
static void test_post_held_by_a_block_after_the_take(void **state)
{
	struct fixture *f = *state;
	srv.async = false;
	wait_token(f);
	pthread_mutex_lock(&own.mu);
	own.hook_calls = own.revoke_after = 0;
	own.pacer = f->pacer;
	own.throttle_ms = 300;
	pthread_mutex_unlock(&own.mu);
	int posts_before = atomic_load(&srv.posts);
	struct job *job = run(f, group_job(f->cfg));
	assert_int_equal(job->status, JOB_SUCCEEDED);
	assert_int_equal(job->attempts, 1);
	assert_int_equal(atomic_load(&srv.posts) - posts_before, 1);
	pthread_mutex_lock(&own.mu);
	int64_t blocked_until = own.blocked_until;
	pthread_mutex_unlock(&own.mu);
	assert_true(blocked_until > 0);
	assert_true(atomic_load(&srv.last_post_ms) >= blocked_until);
	assert_int_equal(atomic_load(&own.posting), 0);
	job_free(job);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_revoke_between_check_and_post),
	    cmocka_unit_test(test_operation_start_and_chat),
	    cmocka_unit_test(test_post_held_by_a_block_after_the_take),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
