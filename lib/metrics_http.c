/*
 * metrics_http.c - the endpoint (libmicrohttpd): GET /metrics renders the registry after the
 * collect callback, GET /readyz answers from the ready flag; one scrape at a time.
 */
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "log.h"
#include "metrics_int.h"

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, char *body, size_t len,
                               enum MHD_ResponseMemoryMode mode, const char *ctype)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
	if (!r) {
		if (mode == MHD_RESPMEM_MUST_FREE)
			free(body);
		return MHD_NO;
	}
	enum MHD_Result ret = MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	if (ret == MHD_YES)
		ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned status, const char *text)
{
	return respond(conn, status, (char *)text, strlen(text), MHD_RESPMEM_MUST_COPY,
	               "text/plain; charset=utf-8");
}

static enum MHD_Result serve_metrics(struct metrics *m, struct MHD_Connection *conn)
{
	pthread_mutex_lock(&m->scrape_lock);
	pthread_mutex_lock(&m->state_lock);
	metrics_collect_fn fn = m->collect_fn;
	void *arg = m->collect_arg;
	pthread_mutex_unlock(&m->state_lock);
	if (fn)
		fn(m, arg);
	char *body;
	size_t len;
	bool ok = metrics_render(m, &body, &len);
	pthread_mutex_unlock(&m->scrape_lock);
	if (!ok)
		return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "render failed\n");
	return respond(conn, MHD_HTTP_OK, body, len, MHD_RESPMEM_MUST_FREE,
	               "text/plain; version=0.0.4; charset=utf-8");
}

static enum MHD_Result serve_readyz(struct metrics *m, struct MHD_Connection *conn)
{
	char text[METRICS_REASON_MAX + 32];
	pthread_mutex_lock(&m->state_lock);
	bool ready = m->ready;
	if (ready)
		snprintf(text, sizeof(text), "ready\n");
	else
		snprintf(text, sizeof(text), "not ready: %s\n", m->reason);
	pthread_mutex_unlock(&m->state_lock);
	return respond_text(conn, ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, text);
}

static enum MHD_Result handle_request(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload_data, size_t *upload_size, void **req)
{
	(void)version;
	(void)upload_data;
	(void)upload_size;
	(void)req;
	struct metrics *m = cls;
	if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
		return respond_text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n");
	if (strcmp(url, "/metrics") == 0)
		return serve_metrics(m, conn);
	if (strcmp(url, "/healthz") == 0)
		return respond_text(conn, MHD_HTTP_OK, "ok\n");
	if (strcmp(url, "/readyz") == 0)
		return serve_readyz(m, conn);
	return respond_text(conn, MHD_HTTP_NOT_FOUND, "not found\n");
}

/* MHD hands us printf-style messages; the attribute lets the compiler check vsnprintf. */
CP_PRINTF(2, 0) static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[CP_ERRSTR_SIZE];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	size_t n = strlen(msg);
	if (n > 0 && msg[n - 1] == '\n')
		msg[n - 1] = '\0';
	log_warning("metrics endpoint: %s", msg);
}

/* "host:port", "[v6]:port" or ":port" into a resolved address. */
static bool parse_listen(const char *listen, struct addrinfo **ai, char *err, size_t errcap)
{
	char host[256];
	const char *colon = strrchr(listen, ':');
	const char *h = listen;
	size_t hlen = colon ? (size_t)(colon - listen) : 0;
	if (!colon || hlen >= sizeof(host))
		goto bad;
	if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
		h++;
		hlen -= 2;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	char *end;
	errno = 0;
	long port = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || port < 0 || port > 65535)
		goto bad;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%ld", port);
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                         .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
	int rc = getaddrinfo(hlen ? host : NULL, portstr, &hints, ai);
	if (rc != 0) {
		snprintf(err, errcap, "metrics listen \"%s\": %s", listen, gai_strerror(rc));
		return false;
	}
	return true;
bad:
	snprintf(err, errcap, "metrics listen \"%s\": expected host:port", listen);
	return false;
}

bool metrics_listen(struct metrics *m, const char *listen, char *err, size_t errcap)
{
	if (!listen || !*listen)
		return true;
	if (m->httpd) {
		snprintf(err, errcap, "metrics endpoint already listening");
		return false;
	}
	struct addrinfo *ai;
	if (!parse_listen(listen, &ai, err, errcap))
		return false;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* The logger must come first or MHD logs the earlier options' errors itself. */
	m->httpd = MHD_start_daemon(flags, 0, NULL, NULL, handle_request, m,
	                            MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_SOCK_ADDR,
	                            ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)32,
	                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!m->httpd) {
		snprintf(err, errcap, "metrics listen \"%s\": cannot start the HTTP server: %s",
		         listen, strerror(errno));
		return false;
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->httpd, MHD_DAEMON_INFO_BIND_PORT);
	m->port = info ? info->port : 0;
	return true;
}

uint16_t metrics_port(const struct metrics *m)
{
	return m->port;
}

void metrics_stop(struct metrics *m)
{
	if (!m || !m->httpd)
		return;
	/* Returns once every handler has returned: no scrape runs after this. */
	MHD_stop_daemon(m->httpd);
	m->httpd = NULL;
	m->port = 0;
}
