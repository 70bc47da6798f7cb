/*
 * log.h - logging to journald (native structured entries) or to stderr.
 *
 * Under systemd (JOURNAL_STREAM names our stderr) entries go through sd_journal_send with
 * fields such as CHATPROV_REQUEST_ID; elsewhere one line per record goes to stderr with a
 * level. Secrets and tokens are never passed to these functions.
 */
#ifndef CHATPROV_LOG_H
#define CHATPROV_LOG_H

#include <sys/uio.h>

#include "common.h"

enum log_level { LOG_LVL_ERROR, LOG_LVL_WARNING, LOG_LVL_NOTICE, LOG_LVL_INFO, LOG_LVL_DEBUG };

/* Structured context of a record; any field may be NULL. */
struct log_ctx {
	const char *request_id;
	const char *chat_id;
	const char *graph_request_id;
	const char *client_request_id;
	const char *tenant;
};

/* Decides once whether stderr is the journal. Safe to call again (e.g. in tests). */
void log_init(const char *ident);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* "error", "warning", "notice", "info", "debug". */
bool log_parse_level(const char *name, enum log_level *out) CP_MUSTCHECK;
const char *log_level_name(enum log_level level);

void log_msg(enum log_level level, const char *fmt, ...) CP_PRINTF(2, 3);
void log_with(enum log_level level, const struct log_ctx *ctx, const char *fmt, ...)
    CP_PRINTF(3, 4);

/*
 * The fields of one native journal entry, "NAME=value" each, as log_with sends them with
 * sd_journal_sendv: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, then CHATPROV_REQUEST_ID,
 * CHATPROV_CHAT_ID, GRAPH_REQUEST_ID, GRAPH_CLIENT_REQUEST_ID and CHATPROV_TENANT when the
 * context has them (NULL or empty values are left out, so journalctl's field queries only
 * match entries that carry the field). The iovecs point into buf. Exposed for tests.
 */
#define LOG_JOURNAL_MAX_FIELDS 8
struct log_journal_fields {
	struct iovec iov[LOG_JOURNAL_MAX_FIELDS];
	size_t n;
	char buf[4096];
};
void log_journal_fields(enum log_level level, const struct log_ctx *ctx, const char *msg,
                        struct log_journal_fields *out);

#define log_error(...)   log_msg(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_LVL_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_LVL_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...)   log_msg(LOG_LVL_DEBUG, __VA_ARGS__)

#endif
