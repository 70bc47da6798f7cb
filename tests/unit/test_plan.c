/* test_plan.c - plan: per-event objects, tenants, the summary's ETA under [limits]. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "plan.h"

static char path[64];

/* Two profiles: default at 20 per 10 s, fabrikam at 5; global 200; window 10 s. */
static struct cfg *load(const char *global)
{
	char secret[] = "/tmp/test_plan_secret_XXXXXX";
	int fd = mkstemp(secret);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "s\n", 2), 2);
	close(fd);
	snprintf(path, sizeof path, "/tmp/test_plan_conf_XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	FILE *f = fdopen(fd, "w");
	fprintf(f,
	        "[kafka]\nbrokers = 127.0.0.1:9092\ngroup_id = g\ninput_topic = in\n"
	        "output_topic = out\n[graph]\napi_version = beta\n"
	        "[auth]\ntenant_id = contoso.onmicrosoft.com\n"
	        "client_id = 00000000-0000-0000-0000-000000000001\nclient_secret_file = %s\n"
	        "[tenant.fabrikam]\ntenant_id = fabrikam.onmicrosoft.com\n"
	        "client_id = 00000000-0000-0000-0000-000000000002\nclient_secret_file = %s\n"
	        "chat_creates_per_10s_per_tenant = 5\n"
	        "[limits]\nchat_creates_per_10s_per_tenant = 20\nchat_creates_per_10s_global = %s\n",
	        secret, secret, global);
	fclose(f);
	char err[512];
	struct cfg *cfg = NULL;
	if (!cfg_load(path, &cfg, err, sizeof err))
		fail_msg("%s", err);
	unlink(path);
	unlink(secret);
	return cfg;
}

static json_object *event(struct plan *p, const char *text)
{
	json_object *o = NULL;
	assert_true(plan_event(p, text, strlen(text), &o));
	return o;
}

static const char *get(json_object *o, const char *a, const char *b)
{
	json_object *x = NULL;
	assert_true(json_object_object_get_ex(o, a, &x));
	if (b)
		assert_true(json_object_object_get_ex(x, b, &x));
	return json_object_get_string(x);
}

#define GROUP(id, tenant)                                                                       \
	"{\"id\":\"" id "\"," tenant "\"chatType\":\"group\",\"members\":[{\"userId\":"              \
	"\"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca\"},{\"userId\":\"alex@contoso.com\"}]}"

static void test_events_and_summary(void **state)
{
	(void)state;
	struct cfg *cfg = load("200");
	struct plan *p = NULL;
	char err[256];
	assert_true(plan_new(cfg, &p, err, sizeof err));
	json_object *o = event(p, GROUP("a", ""));
	assert_string_equal(get(o, "status", NULL), "valid");
	assert_string_equal(get(o, "tenant", NULL), "default");
	assert_string_equal(get(o, "request", "url"), "https://graph.microsoft.com/beta/chats");
	assert_string_equal(get(o, "request", "method"), "POST");
	json_object_put(o);
	o = event(p, GROUP("b", "\"tenant\":\"fabrikam\","));
	assert_string_equal(get(o, "tenant", NULL), "fabrikam");
	json_object_put(o);
	o = event(p, GROUP("c", "\"tenant\":\"nobody\","));
	assert_string_equal(get(o, "status", NULL), "rejected");
	assert_string_equal(get(o, "id", NULL), "c");
	assert_non_null(strstr(get(o, "reason", NULL), "nobody"));
	json_object_put(o);
	o = event(p, "{\"id\":\"d\",");
	assert_string_equal(get(o, "id", NULL), "d"); /* peeked from invalid JSON */
	json_object_put(o);
	o = event(p, "[]");
	json_object *id = NULL;
	assert_true(json_object_object_get_ex(o, "id", &id) && id == NULL);
	json_object_put(o);
	for (int i = 0; i < 44; i++) {
		o = event(p, GROUP("f", "\"tenant\":\"fabrikam\","));
		json_object_put(o);
	}
	assert_int_equal(plan_rejected(p), 3);
	assert_true(plan_summary(p, &o));
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	/* fabrikam: 45 at 5 per 10 s: 4 at once (slow start), 41 at 0.5/s = 82 s; default: 1
	 * at once. */
	assert_string_equal(text, "{\"summary\":{\"events\":49,\"valid\":46,\"rejected\":3,"
	                          "\"tenants\":{\"default\":{\"chats\":1,\"etaSeconds\":0.0},"
	                          "\"fabrikam\":{\"chats\":45,\"etaSeconds\":82.0}},"
	                          "\"etaSeconds\":82.0}}");
	json_object_put(o);
	plan_free(p);
	cfg_free(cfg);
}

static void test_global_limit_decides(void **state)
{
	(void)state;
	/* Global 3 per 10 s under tenant limits of 20 and 5: 46 chats, 3 at once, 43 at 0.3/s. */
	struct cfg *cfg = load("3");
	struct plan *p = NULL;
	char err[256];
	assert_true(plan_new(cfg, &p, err, sizeof err));
	for (int i = 0; i < 46; i++) {
		json_object *o =
		    event(p, i % 2 ? GROUP("x", "\"tenant\":\"fabrikam\",") : GROUP("y", ""));
		json_object_put(o);
	}
	json_object *o = NULL, *s, *eta;
	assert_true(plan_summary(p, &o));
	assert_true(json_object_object_get_ex(o, "summary", &s));
	assert_true(json_object_object_get_ex(s, "etaSeconds", &eta));
	assert_true(fabs(json_object_get_double(eta) - 143.3) < 0.05);
	json_object_put(o);
	plan_free(p);
	cfg_free(cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_events_and_summary),
	    cmocka_unit_test(test_global_limit_decides),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
