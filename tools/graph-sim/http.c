/*
 * http.c - libmicrohttpd plumbing: request bodies, routing, replies, delayed answers.
 *
 * A delayed answer (latency_ms, hang_s) is computed at once (side effects happen at arrival,
 * which is what throttling and the ledger need), then the connection is suspended and a
 * timer thread resumes it at its due time; MHD calls the handler again and the stored reply
 * goes out. So a thousand slow requests cost a thousand small records, not threads.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "gsim.h"

struct conn_ctx {
	char *body;
	size_t len, cap;
	bool too_big;
	bool have_reply;
	bool suspended; /* counted in tq.suspended until MHD hands it back */
	struct gs_reply reply;
};

struct pending {
	int64_t due;
	struct MHD_Connection *conn;
};

/* Min-heap of suspended connections by due time, served by one timer thread. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pending *heap;
	size_t n, cap;
	bool draining, stop;
	size_t suspended; /* connections suspended and not yet seen again by MHD */
	pthread_t th;
	bool started;
} tq = {.mu = PTHREAD_MUTEX_INITIALIZER};

static struct MHD_Daemon *daemon_;

static void heap_swap(size_t a, size_t b)
{
	struct pending t = tq.heap[a];
	tq.heap[a] = tq.heap[b];
	tq.heap[b] = t;
}

static bool heap_push(struct pending p)
{
	if (tq.n == tq.cap) {
		size_t ncap = tq.cap ? tq.cap * 2 : 256;
		struct pending *nh = realloc(tq.heap, ncap * sizeof(*nh));
		if (!nh)
			return false;
		tq.heap = nh;
		tq.cap = ncap;
	}
	size_t i = tq.n++;
	tq.heap[i] = p;
	while (i > 0 && tq.heap[(i - 1) / 2].due > tq.heap[i].due) {
		heap_swap(i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	return true;
}

static struct pending heap_pop(void)
{
	struct pending top = tq.heap[0];
	tq.heap[0] = tq.heap[--tq.n];
	for (size_t i = 0;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < tq.n && tq.heap[l].due < tq.heap[m].due)
			m = l;
		if (r < tq.n && tq.heap[r].due < tq.heap[m].due)
			m = r;
		if (m == i)
			break;
		heap_swap(i, m);
		i = m;
	}
	return top;
}

static void *timer_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&tq.mu);
	while (!tq.stop) {
		int64_t now = gs_mono_ms();
		if (tq.n > 0 && (tq.draining || tq.heap[0].due <= now)) {
			struct pending p = heap_pop();
			MHD_resume_connection(p.conn);
			continue;
		}
		if (tq.n == 0) {
			pthread_cond_wait(&tq.cv, &tq.mu);
			continue;
		}
		int64_t due = tq.heap[0].due;
		struct timespec ts = {.tv_sec = due / 1000, .tv_nsec = (due % 1000) * 1000000};
		pthread_cond_timedwait(&tq.cv, &tq.mu, &ts);
	}
	pthread_mutex_unlock(&tq.mu);
	return NULL;
}

/* Suspends the connection until `due`; false if it cannot be queued. */
static bool delay_connection(struct MHD_Connection *c, struct conn_ctx *cx, int64_t due)
{
	pthread_mutex_lock(&tq.mu);
	if (tq.draining) {
		pthread_mutex_unlock(&tq.mu);
		return false;
	}
	MHD_suspend_connection(c);
	bool ok = heap_push((struct pending){.due = due, .conn = c});
	if (!ok)
		MHD_resume_connection(c);
	cx->suspended = true;
	tq.suspended++;
	pthread_cond_signal(&tq.cv);
	pthread_mutex_unlock(&tq.mu);
	return ok;
}

void gs_reply_header(struct gs_reply *r, const char *name, const char *fmt, ...)
{
	if (r->n_hdrs == GS_REPLY_HDRS)
		return;
	va_list ap;
	va_start(ap, fmt);
	char *v = NULL;
	int n = vasprintf(&v, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	snprintf(r->hdr_name[r->n_hdrs], sizeof(r->hdr_name[0]), "%s", name);
	r->hdr_value[r->n_hdrs++] = v;
}

void gs_reply_json(struct gs_reply *r, unsigned status, json_object *o)
{
	free(r->body);
	r->body = gs_json_dump(o, &r->len);
	if (!r->body) {
		status = 500;
		r->len = 0;
	}
	json_object_put(o);
	r->status = status;
	r->content_type = "application/json";
}

/* Graph's error shape, with the innerError Graph adds to every error. */
void gs_reply_graph_error(struct gs_reply *r, const struct gs_req *q, unsigned status,
                          const char *code, const char *fmt, ...)
{
	char msg[512], date[32];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	gs_fmt_time(q->wall_ms, date, sizeof(date));
	date[19] = '\0'; /* Graph's innerError.date has no fraction */
	json_object *inner = json_object_new_object();
	json_object_object_add(inner, "date", json_object_new_string(date));
	json_object_object_add(inner, "request-id", json_object_new_string(r->request_id));
	json_object_object_add(inner, "client-request-id",
	                       json_object_new_string(q->crid ? q->crid : r->request_id));
	json_object *err = json_object_new_object();
	json_object_object_add(err, "code", json_object_new_string(code));
	json_object_object_add(err, "message", json_object_new_string(msg));
	json_object_object_add(err, "innerError", inner);
	json_object *o = json_object_new_object();
	json_object_object_add(o, "error", err);
	gs_reply_json(r, status, o);
}

const char *gs_req_header(const struct gs_req *q, const char *name)
{
	if (q->h2)
		return gs_h2_header(q->h2, name);
	return MHD_lookup_connection_value(q->conn, MHD_HEADER_KIND, name);
}

const char *gs_req_arg(const struct gs_req *q, const char *name)
{
	if (q->h2)
		return gs_h2_arg(q->h2, name);
	return MHD_lookup_connection_value(q->conn, MHD_GET_ARGUMENT_KIND, name);
}

void gs_req_origin(const struct gs_req *q, char *buf, size_t cap)
{
	const char *host = gs_req_header(q, q->h2 ? ":authority" : "Host");
	bool tls = q->h2 || MHD_get_connection_info(q->conn, MHD_CONNECTION_INFO_PROTOCOL);
	snprintf(buf, cap, "%s://%s", tls ? "https" : "http", host ? host : "localhost");
}

static void route(struct gs_req *q, struct gs_reply *r)
{
	const char *p = q->path;
	if (strncmp(p, "/_sim/", 6) == 0) {
		gs_handle_sim(q, r, p + 6);
		return;
	}
	if (strcmp(p, "/metadata/identity/oauth2/token") == 0) {
		gs_handle_mi(q, r);
		return;
	}
	const char *slash = strchr(p + 1, '/');
	if (slash && strcmp(slash, "/oauth2/v2.0/token") == 0 && slash - p - 1 < 256) {
		char tenant[256];
		snprintf(tenant, sizeof(tenant), "%.*s", (int)(slash - p - 1), p + 1);
		gs_handle_token(q, r, tenant);
		return;
	}
	gs_handle_graph(q, r, p);
}

void gs_reply_free(struct gs_reply *r)
{
	free(r->body);
	r->body = NULL;
	for (int i = 0; i < r->n_hdrs; i++)
		free(r->hdr_value[i]);
	r->n_hdrs = 0;
}

/* Hostile bodies: 20 MiB of one valid JSON document, or padding that never ends. */
size_t gs_stream_fill(enum gs_stream kind, uint64_t pos, char *buf, size_t max, bool *end)
{
	static const char head[] =
	    "{\"id\":\"19:00000000000000000000000000000000@thread.v2\",\"pad\":\"";
	const uint64_t hlen = sizeof(head) - 1;
	const uint64_t total = kind == GS_STREAM_OVERSIZED ? 20u * 1024 * 1024 : UINT64_MAX;
	size_t n = 0;
	while (n < max && pos + n < total) {
		uint64_t i = pos + n;
		if (i < hlen)
			buf[n++] = head[i];
		else if (i + 2 < total) {
			uint64_t run = total - 2 - i;
			size_t k = run < max - n ? (size_t)run : max - n;
			memset(buf + n, 'x', k);
			n += k;
		} else
			buf[n++] = i + 2 == total ? '"' : '}';
	}
	*end = pos + n >= total;
	return n;
}

static ssize_t stream_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
	struct conn_ctx *cx = cls;
	bool end;
	size_t n = gs_stream_fill(cx->reply.stream, pos, buf, max, &end);
	if (n == 0 && end)
		return MHD_CONTENT_READER_END_OF_STREAM;
	return (ssize_t)n;
}

static enum MHD_Result deliver(struct MHD_Connection *c, struct conn_ctx *cx)
{
	struct gs_reply *r = &cx->reply;
	if (r->close)
		return MHD_NO;
	struct MHD_Response *resp;
	if (r->stream != GS_STREAM_NONE)
		resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_cb, cx,
		                                         NULL);
	else
		resp = MHD_create_response_from_buffer(r->len, r->body ? r->body : (void *)"",
		                                       r->body ? MHD_RESPMEM_MUST_FREE
		                                               : MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	if (r->stream == GS_STREAM_NONE)
		r->body = NULL; /* the response owns it now */
	if (r->content_type)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
	for (int i = 0; i < r->n_hdrs; i++)
		MHD_add_response_header(resp, r->hdr_name[i], r->hdr_value[i]);
	enum MHD_Result ret = MHD_queue_response(c, r->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* Computes the answer of a complete request: both fronts (MHD, HTTP/2) come here. */
void gs_serve(struct gs_req *q, struct gs_reply *r, bool too_big)
{
	gs_guid_random(r->request_id);
	if (too_big) {
		r->route = GS_R_OTHER;
		gs_reply_graph_error(r, q, 413, "RequestEntityTooLarge",
		                     "The request body exceeds %d bytes.", GS_BODY_MAX);
		return;
	}
	route(q, r);
}

/*
 * A resumed connection is back in MHD's hands once MHD calls us for it again (or completes
 * it): until then MHD_stop_daemon would abort on it, so gs_http_stop waits for the count.
 */
static void seen_again(struct conn_ctx *cx)
{
	pthread_mutex_lock(&tq.mu);
	if (cx->suspended) {
		cx->suspended = false;
		tq.suspended--;
	}
	pthread_mutex_unlock(&tq.mu);
}

static enum MHD_Result handle_final(struct MHD_Connection *c, const char *url, const char *method,
                                    struct conn_ctx *cx)
{
	struct gs_req q = {.conn = c,
	                   .method = method,
	                   .path = url,
	                   .body = cx->body ? cx->body : "",
	                   .body_len = cx->len,
	                   .mono_ms = gs_mono_ms(),
	                   .wall_ms = gs_wall_ms()};
	q.crid = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "client-request-id");
	cx->have_reply = true;
	gs_serve(&q, &cx->reply, cx->too_big);
	if (cx->reply.delay_ms > 0 && delay_connection(c, cx, q.mono_ms + cx->reply.delay_ms))
		return MHD_YES;
	return deliver(c, cx);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
	struct conn_ctx *cx = *con_cls;
	(void)cls;
	(void)version;
	if (!cx) {
		cx = calloc(1, sizeof(*cx));
		if (!cx)
			return MHD_NO;
		*con_cls = cx;
		return MHD_YES;
	}
	if (*upload_data_size) {
		size_t n = *upload_data_size;
		*upload_data_size = 0;
		return gs_body_append(&cx->body, &cx->len, &cx->cap, &cx->too_big, upload_data, n)
		           ? MHD_YES
		           : MHD_NO;
	}
	if (cx->have_reply) {
		seen_again(cx);
		return deliver(c, cx); /* resumed after a delay */
	}
	return handle_final(c, url, method, cx);
}

static void completed_cb(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
	struct conn_ctx *cx = *con_cls;
	(void)cls;
	(void)c;
	(void)toe;
	if (!cx)
		return;
	seen_again(cx);
	gs_reply_free(&cx->reply);
	free(cx->body);
	free(cx);
	*con_cls = NULL;
}

static void connection_cb(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
	(void)cls;
	(void)c;
	(void)socket_context;
	if (toe == MHD_CONNECTION_NOTIFY_STARTED)
		gs_ledger_connection_accepted();
}

bool gs_parse_listen(const char *listen, struct sockaddr_in *sa, char host[64])
{
	const char *colon = strrchr(listen, ':');
	if (!colon || (size_t)(colon - listen) >= 64)
		return false;
	snprintf(host, 64, "%.*s", (int)(colon - listen), listen);
	char *end;
	errno = 0;
	long port = strtol(colon + 1, &end, 10);
	if (errno || *end || end == colon + 1 || port < 0 || port > 65535)
		return false;
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	sa->sin_port = htons((uint16_t)port);
	return inet_pton(AF_INET, host, &sa->sin_addr) == 1;
}

static char *read_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	char *buf = malloc(1024 * 1024);
	size_t n = buf ? fread(buf, 1, 1024 * 1024 - 1, f) : 0;
	fclose(f);
	if (!buf || n == 0) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	return buf;
}

bool gs_http_start(const char *listen, const char *cert, const char *key, unsigned threads,
                   char *url, size_t url_cap)
{
	struct sockaddr_in sa;
	char host[64];
	char *cert_pem = NULL, *key_pem = NULL;
	if (!gs_parse_listen(listen, &sa, host)) {
		fprintf(stderr, "graph-sim: --listen wants IPv4:PORT, got '%s'\n", listen);
		return false;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	                 MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO;
	if (cert) {
		cert_pem = read_file(cert);
		key_pem = read_file(key);
		if (!cert_pem || !key_pem) {
			fprintf(stderr, "graph-sim: cannot read --tls-cert/--tls-key\n");
			goto fail;
		}
		flags |= MHD_USE_TLS;
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&tq.cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&tq.th, NULL, timer_main, NULL) != 0)
		goto fail;
	tq.started = true;
	daemon_ = MHD_start_daemon(
	    flags, 0, NULL, NULL, access_cb, NULL, MHD_OPTION_SOCK_ADDR, &sa,
	    MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT, 16000u,
	    MHD_OPTION_CONNECTION_TIMEOUT, 0u, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u,
	    MHD_OPTION_NOTIFY_COMPLETED, completed_cb, NULL, MHD_OPTION_NOTIFY_CONNECTION,
	    connection_cb, NULL, cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, cert_pem,
	    MHD_OPTION_HTTPS_MEM_KEY, key_pem, MHD_OPTION_END);
	if (!daemon_) {
		fprintf(stderr, "graph-sim: cannot start the HTTP server on %s\n", listen);
		goto fail;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(daemon_, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(url, url_cap, "%s://%s:%u", cert ? "https" : "http", host, di ? di->port : 0);
	free(cert_pem);
	free(key_pem);
	return true;
fail:
	free(cert_pem);
	free(key_pem);
	return false;
}

/*
 * Resume every suspended connection first and wait until MHD has taken each back: MHD aborts
 * the process when it is stopped with a connection still suspended (or resumed but not yet
 * seen by its thread again). The quiesced listen socket is closed only after
 * MHD_stop_daemon: its pool threads may still be using it until then (MHD's manual), and
 * closing it earlier aborted graph-sim at a SIGTERM once in CI.
 */
void gs_http_stop(void)
{
	MHD_socket ls = MHD_INVALID_SOCKET;
	if (daemon_)
		ls = MHD_quiesce_daemon(daemon_);
	pthread_mutex_lock(&tq.mu);
	tq.draining = true;
	pthread_cond_signal(&tq.cv);
	pthread_mutex_unlock(&tq.mu);
	for (int i = 0; i < 300; i++) {
		pthread_mutex_lock(&tq.mu);
		bool handed_back = tq.n == 0 && tq.suspended == 0;
		pthread_mutex_unlock(&tq.mu);
		if (handed_back)
			break;
		struct timespec ts = {0, 10 * 1000000};
		nanosleep(&ts, NULL);
	}
	if (daemon_)
		MHD_stop_daemon(daemon_);
	daemon_ = NULL;
	if (ls != MHD_INVALID_SOCKET)
		close(ls);
	if (tq.started) {
		pthread_mutex_lock(&tq.mu);
		tq.stop = true;
		pthread_cond_signal(&tq.cv);
		pthread_mutex_unlock(&tq.mu);
		pthread_join(tq.th, NULL);
		tq.started = false;
	}
	free(tq.heap);
	tq.heap = NULL;
}
