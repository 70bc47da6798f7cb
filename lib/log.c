/* log.c - journald or stderr logging with structured fields. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <systemd/sd-journal.h>

#include "cptime.h"

static atomic_int current_level = LOG_LVL_INFO;
static bool to_journal;
static const char *log_ident = "chatprovd";

static const char *const level_names[] = {"error", "warning", "notice", "info", "debug"};
static const int syslog_priorities[] = {LOG_ERR, LOG_WARNING, LOG_NOTICE, LOG_INFO, LOG_DEBUG};

/* JOURNAL_STREAM is "dev:ino" of the journal socket; it only counts if stderr is that socket. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	if (!js)
		return false;
	char *end;
	errno = 0;
	unsigned long long dev = strtoull(js, &end, 10);
	if (errno || end == js || *end != ':')
		return false;
	const char *ino_text = end + 1;
	unsigned long long ino = strtoull(ino_text, &end, 10);
	if (errno || end == ino_text || *end)
		return false;
	struct stat st;
	if (fstat(2, &st) != 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(const char *ident)
{
	if (ident)
		log_ident = ident;
	to_journal = stderr_is_journal();
}

void log_set_level(enum log_level level)
{
	atomic_store(&current_level, (int)level);
}

enum log_level log_get_level(void)
{
	return (enum log_level)atomic_load(&current_level);
}

bool log_parse_level(const char *name, enum log_level *out)
{
	for (size_t i = 0; i < CP_ARRAY_LEN(level_names); i++) {
		if (strcmp(name, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return true;
		}
	}
	return false;
}

const char *log_level_name(enum log_level level)
{
	return (unsigned)level < CP_ARRAY_LEN(level_names) ? level_names[level] : "unknown";
}

/* Appends "name=value" to the entry, unless value is NULL or empty or buf is full. */
static void add_field(struct log_journal_fields *f, size_t *used, const char *name,
                      const char *value)
{
	if (!value || !*value || f->n >= LOG_JOURNAL_MAX_FIELDS)
		return;
	size_t room = sizeof f->buf - *used;
	/* "NAME=", at least one character of the value, the NUL. */
	if (room < strlen(name) + 3)
		return;
	int len = snprintf(f->buf + *used, room, "%s=%s", name, value);
	if (len < 0)
		return;
	size_t stored = (size_t)len < room ? (size_t)len : room - 1;
	f->iov[f->n++] = (struct iovec){.iov_base = f->buf + *used, .iov_len = stored};
	*used += stored + 1;
}

void log_journal_fields(enum log_level level, const struct log_ctx *ctx, const char *msg,
                        struct log_journal_fields *out)
{
	char priority[4];
	size_t used = 0;
	out->n = 0;
	snprintf(priority, sizeof priority, "%d", syslog_priorities[level]);
	/* The identifying fields first, so a long message cannot crowd them out. */
	add_field(out, &used, "PRIORITY", priority);
	add_field(out, &used, "SYSLOG_IDENTIFIER", log_ident);
	if (ctx) {
		add_field(out, &used, "CHATPROV_REQUEST_ID", ctx->request_id);
		add_field(out, &used, "CHATPROV_CHAT_ID", ctx->chat_id);
		add_field(out, &used, "GRAPH_REQUEST_ID", ctx->graph_request_id);
		add_field(out, &used, "GRAPH_CLIENT_REQUEST_ID", ctx->client_request_id);
		add_field(out, &used, "CHATPROV_TENANT", ctx->tenant);
	}
	add_field(out, &used, "MESSAGE", *msg ? msg : "-");
}

static void emit_journal(enum log_level level, const struct log_ctx *ctx, const char *msg)
{
	struct log_journal_fields f;
	log_journal_fields(level, ctx, msg, &f);
	/* Nowhere to report a failure to log: journald gone means stderr is gone too. */
	(void)sd_journal_sendv(f.iov, (int)f.n);
}

static void append_field(char *line, size_t cap, const char *name, const char *value)
{
	if (!value || !*value)
		return;
	size_t len = strlen(line);
	if (len < cap)
		snprintf(line + len, cap - len, " %s=%s", name, value);
}

static void emit_stderr(enum log_level level, const struct log_ctx *ctx, const char *msg)
{
	char stamp[32], line[2048];
	if (!cptime_format_rfc3339(cptime_wall_ms(), stamp, sizeof stamp))
		stamp[0] = '\0';
	snprintf(line, sizeof line, "%s %s [%s] %s", stamp, log_ident, level_names[level], msg);
	if (ctx) {
		append_field(line, sizeof line, "request_id", ctx->request_id);
		append_field(line, sizeof line, "tenant", ctx->tenant);
		append_field(line, sizeof line, "chat_id", ctx->chat_id);
		append_field(line, sizeof line, "graph_request_id", ctx->graph_request_id);
		append_field(line, sizeof line, "client_request_id", ctx->client_request_id);
	}
	/* One line per record, whatever the message holds (Graph error texts may be multi-line). */
	for (char *c = line; *c; c++) {
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	}
	/* One fprintf per record: stdio locks the stream, so threads do not interleave. */
	fprintf(stderr, "%s\n", line);
}

CP_PRINTF(3, 0)
static void log_v(enum log_level level, const struct log_ctx *ctx, const char *fmt, va_list ap)
{
	if ((int)level > atomic_load(&current_level))
		return;
	char msg[1536];
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (to_journal)
		emit_journal(level, ctx, msg);
	else
		emit_stderr(level, ctx, msg);
}

void log_msg(enum log_level level, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_v(level, NULL, fmt, ap);
	va_end(ap);
}

void log_with(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_v(level, ctx, fmt, ap);
	va_end(ap);
}
