/* ctl_plan.c - `chatprovctl plan`: what chatprovd would send for a file or the backlog. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cptime.h"
#include "ctl.h"
#include "kafka.h"
#include "plan.h"

#define JSON_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

/* One row of the text table. */
struct row {
	char *cells[6]; /* line, id, status, tenant, chat, request id or reason */
};

struct plan_run {
	struct plan *plan;
	bool text;
	size_t line; /* 1-based input line (file) or message number (topic) */
	struct row *rows;
	size_t n_rows, cap_rows;
	bool failed; /* out of memory or output error: stop */
};

static const char *str_of(json_object *o, const char *key)
{
	json_object *v;
	return json_object_object_get_ex(o, key, &v) && v ? json_object_get_string(v) : NULL;
}

static json_object *path(json_object *o, const char *a, const char *b)
{
	json_object *x = NULL, *y = NULL;
	if (!json_object_object_get_ex(o, a, &x) || !b)
		return x;
	return json_object_object_get_ex(x, b, &y) ? y : NULL;
}

/* "group, 3 members, app" */
static char *chat_cell(json_object *ev)
{
	json_object *body = path(ev, "request", "body");
	char buf[96];
	if (!body)
		return strdup("");
	json_object *members = path(body, "members", NULL);
	snprintf(buf, sizeof buf, "%s, %zu members%s", str_of(body, "chatType"),
	         members ? json_object_array_length(members) : 0,
	         path(body, "installedApps", NULL) ? ", app" : "");
	return strdup(buf);
}

static bool add_row(struct plan_run *r, json_object *ev)
{
	if (r->n_rows == r->cap_rows) {
		size_t cap = r->cap_rows ? r->cap_rows * 2 : 64;
		struct row *rows = realloc(r->rows, cap * sizeof *rows);
		if (!rows)
			return false;
		r->rows = rows;
		r->cap_rows = cap;
	}
	char line[24];
	snprintf(line, sizeof line, "%zu", r->line);
	bool valid = strcmp(str_of(ev, "status"), "valid") == 0;
	json_object *crid = path(ev, "request", "headers");
	const char *last = valid ? str_of(crid, "client-request-id") : str_of(ev, "reason");
	const char *id = str_of(ev, "id");
	struct row *row = &r->rows[r->n_rows];
	row->cells[0] = strdup(line);
	row->cells[1] = strdup(id ? id : "?");
	row->cells[2] = strdup(str_of(ev, "status"));
	row->cells[3] = strdup(valid ? str_of(ev, "tenant") : "");
	row->cells[4] = chat_cell(ev);
	row->cells[5] = strdup(last ? last : "");
	r->n_rows++;
	for (size_t i = 0; i < 6; i++)
		if (!row->cells[i])
			return false;
	return true;
}

/* {"line": N[, "partition", "offset"], then the plan's fields} */
static bool print_json(json_object *ev, size_t line, const rd_kafka_message_t *msg)
{
	json_object *o = json_object_new_object();
	bool ok = o && json_object_object_add(o, "line", json_object_new_int64((int64_t)line)) == 0;
	if (ok && msg)
		ok = json_object_object_add(o, "partition", json_object_new_int(msg->partition)) ==
		         0 &&
		     json_object_object_add(o, "offset", json_object_new_int64(msg->offset)) == 0;
	json_object_object_foreach(ev, key, val)
	{
		if (ok)
			ok = json_object_object_add(o, key, json_object_get(val)) == 0;
	}
	ok = ok && printf("%s\n", json_object_to_json_string_ext(o, JSON_FLAGS)) > 0;
	json_object_put(o);
	return ok;
}

static bool plan_one(struct plan_run *r, const void *buf, size_t len, const rd_kafka_message_t *msg)
{
	json_object *ev = NULL;
	r->line++;
	bool ok = plan_event(r->plan, buf, len, &ev) &&
	          (r->text ? add_row(r, ev) : print_json(ev, r->line, msg));
	json_object_put(ev);
	r->failed = !ok;
	return ok;
}

static bool blank(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
			return false;
	return true;
}

static bool plan_file(struct plan_run *r, FILE *in)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	while ((n = getline(&line, &cap, in)) >= 0) {
		size_t len = (size_t)n;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			len--;
		if (blank(line, len)) {
			r->line++;
			continue;
		}
		if (!plan_one(r, line, len, NULL))
			break;
	}
	free(line);
	return !r->failed && !ferror(in);
}

static bool on_message(const rd_kafka_message_t *msg, void *arg)
{
	struct plan_run *r = arg;
	return plan_one(r, msg->payload, msg->len, msg);
}

static bool plan_topic(struct plan_run *r, const struct cfg *cfg)
{
	char err[CP_ERRSTR_SIZE];
	struct ctl_range *ranges = NULL;
	size_t n = 0;
	rd_kafka_t *rk = kafka_inspector_new(cfg, err, sizeof err);
	bool ok =
	    rk &&
	    ctl_topic_ranges(rk, cfg->kafka.input_topic, true, &ranges, &n, err, sizeof err) &&
	    ctl_read_ranges(rk, cfg->kafka.input_topic, ranges, n, on_message, r, err, sizeof err);
	if (!ok && !r->failed)
		fprintf(stderr, "chatprovctl: plan --from-topic: %s\n", err);
	free(ranges);
	if (rk) {
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	}
	return ok && !r->failed;
}

/* ---- text output ---- */

static void print_rows(const struct row *rows, size_t n, size_t cols)
{
	size_t width[6] = {0};
	for (size_t i = 0; i < n; i++)
		for (size_t c = 0; c < cols; c++) {
			size_t w = strlen(rows[i].cells[c]);
			width[c] = w > width[c] ? w : width[c];
		}
	for (size_t i = 0; i < n; i++) {
		for (size_t c = 0; c < cols; c++) {
			bool last = c + 1 == cols;
			printf("%-*s%s", last ? 0 : (int)width[c], rows[i].cells[c],
			       last ? "\n" : "  ");
		}
	}
}

static void free_rows(struct row *rows, size_t n)
{
	for (size_t i = 0; i < n; i++)
		for (size_t c = 0; c < 6; c++)
			free(rows[i].cells[c]);
	free(rows);
}

static char *eta_text(json_object *o)
{
	char buf[48];
	json_object *v = path(o, "etaSeconds", NULL);
	if (!v)
		return strdup("never");
	cptime_format_duration(json_object_get_double(v), buf, sizeof buf);
	return strdup(buf);
}

static char *count_text(json_object *o, const char *key)
{
	char buf[24];
	snprintf(buf, sizeof buf, "%lld", (long long)json_object_get_int64(path(o, key, NULL)));
	return strdup(buf);
}

/* TENANT CHATS ETA, one line per tenant, then the total. */
static bool print_summary_text(json_object *summary)
{
	json_object *s = path(summary, "summary", NULL), *tenants = path(s, "tenants", NULL);
	size_t n = 1 + (size_t)json_object_object_length(tenants) + 1, i = 1;
	struct row *rows = calloc(n, sizeof *rows);
	if (!rows)
		return false;
	rows[0] = (struct row){{strdup("TENANT"), strdup("CHATS"), strdup("ETA")}};
	json_object_object_foreach(tenants, name, t)
	{
		rows[i++] = (struct row){{strdup(name), count_text(t, "chats"), eta_text(t)}};
	}
	rows[i] = (struct row){{strdup("all"), count_text(s, "valid"), eta_text(s)}};
	bool ok = true;
	for (size_t k = 0; k < n; k++)
		for (size_t c = 0; c < 3; c++)
			ok = ok && rows[k].cells[c];
	if (ok) {
		printf("\n");
		print_rows(rows, n, 3);
		printf("\n%lld events: %lld valid, %lld rejected\n",
		       (long long)json_object_get_int64(path(s, "events", NULL)),
		       (long long)json_object_get_int64(path(s, "valid", NULL)),
		       (long long)json_object_get_int64(path(s, "rejected", NULL)));
	}
	free_rows(rows, n);
	return ok;
}

static bool print_text(struct plan_run *r, json_object *summary)
{
	struct row head = {
	    {"LINE", "ID", "STATUS", "TENANT", "CHAT", "CLIENT-REQUEST-ID / REASON"}};
	struct row *rows = malloc((r->n_rows + 1) * sizeof *rows);
	if (!rows)
		return false;
	rows[0] = head;
	memcpy(rows + 1, r->rows, r->n_rows * sizeof *rows);
	print_rows(rows, r->n_rows + 1, 6);
	free(rows);
	return print_summary_text(summary);
}

/* ---- the command ---- */

struct plan_opts {
	bool text, from_topic;
	const char *file;
};

static int parse_opts(int argc, char **argv, struct plan_opts *o)
{
	static const struct option longopts[] = {
	    {"format", required_argument, NULL, 'f'},
	    {"from-topic", no_argument, NULL, 't'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "f:t", longopts, NULL)) != -1) {
		if (c == 't') {
			o->from_topic = true;
		} else if (c == 'f' &&
		           (strcmp(optarg, "json") == 0 || strcmp(optarg, "text") == 0)) {
			o->text = strcmp(optarg, "text") == 0;
		} else {
			if (c == 'f')
				fprintf(stderr, "chatprovctl plan: --format is json or text\n");
			return CTL_USAGE;
		}
	}
	if (optind < argc)
		o->file = argv[optind++];
	if (optind < argc || (o->from_topic && o->file)) {
		fprintf(stderr, "chatprovctl plan: one input: FILE, - or --from-topic\n");
		return CTL_USAGE;
	}
	return CTL_OK;
}

static bool run_input(struct plan_run *r, const struct cfg *cfg, const struct plan_opts *o)
{
	if (o->from_topic)
		return plan_topic(r, cfg);
	if (!o->file || strcmp(o->file, "-") == 0)
		return plan_file(r, stdin);
	FILE *in = fopen(o->file, "re");
	if (!in) {
		perror(o->file);
		return false;
	}
	bool ok = plan_file(r, in);
	fclose(in);
	return ok;
}

static bool finish(struct plan_run *r)
{
	json_object *summary = NULL;
	bool ok = plan_summary(r->plan, &summary);
	if (ok && r->text)
		ok = print_text(r, summary);
	else if (ok)
		ok = printf("%s\n", json_object_to_json_string_ext(summary, JSON_FLAGS)) > 0;
	json_object_put(summary);
	return ok && fflush(stdout) == 0;
}

int ctl_plan(const char *config_path, int argc, char **argv)
{
	struct plan_opts o = {0};
	int rc = parse_opts(argc, argv, &o);
	if (rc != CTL_OK)
		return rc;
	struct cfg *cfg = ctl_load_config(config_path);
	if (!cfg)
		return CTL_FAILED;
	char err[CP_ERRSTR_SIZE];
	struct plan_run r = {.text = o.text};
	rc = CTL_FAILED;
	if (!plan_new(cfg, &r.plan, err, sizeof err)) {
		fprintf(stderr, "chatprovctl plan: %s\n", err);
		goto out;
	}
	if (!run_input(&r, cfg, &o) || !finish(&r)) {
		if (r.failed)
			fprintf(stderr, "chatprovctl plan: out of memory or output error\n");
		goto out;
	}
	rc = plan_rejected(r.plan) ? CTL_FAILED : CTL_OK;
out:
	free_rows(r.rows, r.n_rows);
	plan_free(r.plan);
	cfg_free(cfg);
	return rc;
}
