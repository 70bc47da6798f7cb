/*
 * h2.c - the HTTP/2 front (--http2): what Graph speaks, and where transport bugs show.
 *
 * TLS with ALPN "h2" only (OpenSSL), one nghttp2 server session per connection, one epoll
 * thread for all of them. A complete request goes through gs_serve like MHD's; a delayed
 * answer (latency, hang) waits in a min-heap of streams served by the same thread (the
 * epoll timeout is the next due time), so a thousand slow streams on one connection cost a
 * thousand small records and no lock besides the state's.
 *
 * fault_cut_busiest_h2_every_s closes the connection with the most open streams with a TCP
 * reset and no GOAWAY, as when a front end dies under load: the client cannot know which
 * of its requests were processed.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "gsim.h"

#define H2_MAX_STREAMS 1000
#define H2_WINDOW      (16 * 1024 * 1024) /* request bodies never wait for a WINDOW_UPDATE */
#define H2_HDRS_MAX    24
#define H2_ARGS_MAX    4
#define H2_OUT_CAP     (32 * 1024)
#define H2_EVENTS      256
#define H2_IDLE_MS     250 /* the longest sleep: knob changes are seen this fast */

struct h2_conn;

struct h2_stream {
	struct h2_conn *conn; /* NULL once the connection is gone */
	int32_t id;
	char *hdr_name[H2_HDRS_MAX], *hdr_value[H2_HDRS_MAX];
	int n_hdrs;
	char *path;              /* :path without the query */
	char *args[H2_ARGS_MAX]; /* decoded query values handed out by gs_h2_arg */
	int n_args;
	char *body;
	size_t len, cap;
	bool too_big, answered, queued;
	struct gs_reply reply;
	uint64_t sent;                 /* reply body bytes given to nghttp2 */
	int64_t due;                   /* when a delayed answer leaves */
	struct h2_stream *prev, *next; /* the connection's open streams */
};

struct h2_conn {
	int fd;
	SSL *ssl;
	nghttp2_session *ng;
	bool want_out;
	size_t n_streams;
	struct h2_stream *streams;
	struct h2_conn *prev, *next, *dirty_next;
	bool dirty;
	const uint8_t *pend; /* nghttp2's output not yet copied to out */
	size_t pend_len;
	unsigned char out[H2_OUT_CAP];
	size_t out_len, out_off;
};

static struct {
	int ep, lfd, wake_fd;
	SSL_CTX *ctx;
	nghttp2_session_callbacks *cbs;
	pthread_t th;
	bool started;
	struct h2_conn *conns, *dirty;
	struct h2_stream **heap;
	size_t n, cap;
	int64_t next_cut;
} h2 = {.ep = -1, .lfd = -1, .wake_fd = -1};

/* ---- streams ---- */

static void stream_free(struct h2_stream *s)
{
	for (int i = 0; i < s->n_hdrs; i++) {
		free(s->hdr_name[i]);
		free(s->hdr_value[i]);
	}
	for (int i = 0; i < s->n_args; i++)
		free(s->args[i]);
	free(s->path);
	free(s->body);
	gs_reply_free(&s->reply);
	free(s);
}

/* The stream leaves its connection; it is freed unless the timer heap still holds it. */
static void stream_detach(struct h2_stream *s)
{
	struct h2_conn *c = s->conn;
	if (c) {
		if (s->prev)
			s->prev->next = s->next;
		else
			c->streams = s->next;
		if (s->next)
			s->next->prev = s->prev;
		c->n_streams--;
		s->conn = NULL;
	}
	if (!s->queued)
		stream_free(s);
}

const char *gs_h2_header(void *stream, const char *name)
{
	const struct h2_stream *s = stream;
	for (int i = 0; i < s->n_hdrs; i++)
		if (strcasecmp(s->hdr_name[i], name) == 0)
			return s->hdr_value[i];
	return NULL;
}

const char *gs_h2_arg(void *stream, const char *name)
{
	struct h2_stream *s = stream;
	const char *full = gs_h2_header(s, ":path");
	const char *query = full ? strchr(full, '?') : NULL;
	if (!query || s->n_args == H2_ARGS_MAX)
		return NULL;
	query++;
	size_t len = strlen(query);
	char *v = malloc(len + 1);
	if (!v || !gs_form_get(query, len, name, v, len + 1)) {
		free(v);
		return NULL;
	}
	s->args[s->n_args++] = v;
	return v;
}

/* ---- the timer heap (streams by due time) ---- */

static void heap_swap(size_t a, size_t b)
{
	struct h2_stream *t = h2.heap[a];
	h2.heap[a] = h2.heap[b];
	h2.heap[b] = t;
}

static bool heap_push(struct h2_stream *s)
{
	if (h2.n == h2.cap) {
		size_t ncap = h2.cap ? h2.cap * 2 : 1024;
		struct h2_stream **nh = realloc(h2.heap, ncap * sizeof(*nh));
		if (!nh)
			return false;
		h2.heap = nh;
		h2.cap = ncap;
	}
	size_t i = h2.n++;
	h2.heap[i] = s;
	while (i > 0 && h2.heap[(i - 1) / 2]->due > h2.heap[i]->due) {
		heap_swap(i, (i - 1) / 2);
		i = (i - 1) / 2;
	}
	s->queued = true;
	return true;
}

static struct h2_stream *heap_pop(void)
{
	struct h2_stream *top = h2.heap[0];
	h2.heap[0] = h2.heap[--h2.n];
	for (size_t i = 0;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < h2.n && h2.heap[l]->due < h2.heap[m]->due)
			m = l;
		if (r < h2.n && h2.heap[r]->due < h2.heap[m]->due)
			m = r;
		if (m == i)
			break;
		heap_swap(i, m);
		i = m;
	}
	top->queued = false;
	return top;
}

/* ---- answers ---- */

static ssize_t body_read(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t max, uint32_t *flags,
                         nghttp2_data_source *src, void *arg)
{
	struct h2_stream *s = src->ptr;
	const struct gs_reply *r = &s->reply;
	size_t n;
	bool end;
	(void)ng;
	(void)id;
	(void)arg;
	if (r->stream != GS_STREAM_NONE) {
		n = gs_stream_fill(r->stream, s->sent, (char *)buf, max, &end);
	} else {
		size_t left = r->len - (size_t)s->sent;
		n = left < max ? left : max;
		memcpy(buf, r->body + s->sent, n);
		end = s->sent + n == r->len;
	}
	s->sent += n;
	if (end)
		*flags |= NGHTTP2_DATA_FLAG_EOF;
	return (ssize_t)n;
}

static nghttp2_nv nv(const char *name, const char *value)
{
	return (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
	                    NGHTTP2_NV_FLAG_NONE};
}

static void mark_dirty(struct h2_conn *c)
{
	if (c->dirty)
		return;
	c->dirty = true;
	c->dirty_next = h2.dirty;
	h2.dirty = c;
}

/* Hands the stored reply to nghttp2 (which copies the header block). */
static void respond(struct h2_conn *c, struct h2_stream *s)
{
	struct gs_reply *r = &s->reply;
	mark_dirty(c);
	if (r->close) { /* reset, or the end of a hang: this stream gets no answer */
		(void)nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
		                                NGHTTP2_INTERNAL_ERROR);
		return;
	}
	char status[8], length[24], names[GS_REPLY_HDRS][32];
	nghttp2_nv nva[GS_REPLY_HDRS + 3];
	size_t n = 0;
	snprintf(status, sizeof(status), "%u", r->status);
	nva[n++] = nv(":status", status);
	if (r->content_type)
		nva[n++] = nv("content-type", r->content_type);
	if (r->stream == GS_STREAM_NONE) {
		snprintf(length, sizeof(length), "%zu", r->len);
		nva[n++] = nv("content-length", length);
	}
	for (int i = 0; i < r->n_hdrs; i++) { /* HTTP/2 field names are lower case */
		size_t k = 0;
		for (; r->hdr_name[i][k] && k + 1 < sizeof(names[i]); k++)
			names[i][k] = (char)tolower((unsigned char)r->hdr_name[i][k]);
		names[i][k] = '\0';
		nva[n++] = nv(names[i], r->hdr_value[i]);
	}
	nghttp2_data_provider prd = {.source.ptr = s, .read_callback = body_read};
	bool has_body = r->len > 0 || r->stream != GS_STREAM_NONE;
	if (nghttp2_submit_response(c->ng, s->id, nva, n, has_body ? &prd : NULL) != 0)
		(void)nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
		                                NGHTTP2_INTERNAL_ERROR);
}

static void handle_request(struct h2_conn *c, struct h2_stream *s)
{
	const char *method = gs_h2_header(s, ":method"), *full = gs_h2_header(s, ":path");
	s->answered = true;
	if (!method || !full) {
		(void)nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id,
		                                NGHTTP2_PROTOCOL_ERROR);
		mark_dirty(c);
		return;
	}
	s->path = strndup(full, strcspn(full, "?"));
	struct gs_req q = {.h2 = s,
	                   .method = method,
	                   .path = s->path ? s->path : "/",
	                   .body = s->body ? s->body : "",
	                   .body_len = s->len,
	                   .crid = gs_h2_header(s, "client-request-id"),
	                   .mono_ms = gs_mono_ms(),
	                   .wall_ms = gs_wall_ms()};
	gs_serve(&q, &s->reply, s->too_big || !s->path);
	if (s->reply.delay_ms > 0) {
		s->due = q.mono_ms + s->reply.delay_ms;
		if (heap_push(s))
			return;
	}
	respond(c, s);
}

/* ---- nghttp2 callbacks ---- */

static int on_begin_headers(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	struct h2_conn *c = arg;
	if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
		return 0;
	struct h2_stream *s = calloc(1, sizeof(*s));
	if (!s)
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* nghttp2 resets the stream */
	s->conn = c;
	s->id = f->hd.stream_id;
	s->next = c->streams;
	if (c->streams)
		c->streams->prev = s;
	c->streams = s;
	c->n_streams++;
	if (nghttp2_session_set_stream_user_data(ng, s->id, s) != 0) {
		stream_detach(s);
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	return 0;
}

static int on_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *arg)
{
	(void)flags;
	(void)arg;
	struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (!s || s->n_hdrs == H2_HDRS_MAX)
		return 0;
	char *n = strndup((const char *)name, namelen), *v = strndup((const char *)value, valuelen);
	if (!n || !v) {
		free(n);
		free(v);
		return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
	}
	s->hdr_name[s->n_hdrs] = n;
	s->hdr_value[s->n_hdrs++] = v;
	return 0;
}

static int on_data(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                   void *arg)
{
	(void)flags;
	(void)arg;
	struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, id);
	if (!s)
		return 0;
	return gs_body_append(&s->body, &s->len, &s->cap, &s->too_big, (const char *)data, len)
	           ? 0
	           : NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_frame(nghttp2_session *ng, const nghttp2_frame *f, void *arg)
{
	if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
	    !(f->hd.flags & NGHTTP2_FLAG_END_STREAM))
		return 0;
	struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, f->hd.stream_id);
	if (s && !s->answered)
		handle_request(arg, s);
	return 0;
}

static int on_close(nghttp2_session *ng, int32_t id, uint32_t code, void *arg)
{
	(void)code;
	(void)arg;
	struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, id);
	if (s)
		stream_detach(s);
	return 0;
}

/* ---- connections ---- */

static void conn_close(struct h2_conn *c, bool cut)
{
	for (struct h2_conn **d = &h2.dirty; c->dirty && *d; d = &(*d)->dirty_next)
		if (*d == c) {
			*d = c->dirty_next;
			break;
		}
	while (c->streams) {
		if (c->ng)
			(void)nghttp2_session_set_stream_user_data(c->ng, c->streams->id, NULL);
		stream_detach(c->streams);
	}
	if (cut) { /* a reset, not a FIN: the peer learns nothing about its streams */
		struct linger lg = {.l_onoff = 1, .l_linger = 0};
		(void)setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	}
	nghttp2_session_del(c->ng);
	SSL_free(c->ssl);
	close(c->fd); /* also leaves the epoll set */
	if (c->prev)
		c->prev->next = c->next;
	else
		h2.conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c);
}

static void want_out(struct h2_conn *c, bool on)
{
	if (c->want_out == on)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
	if (epoll_ctl(h2.ep, EPOLL_CTL_MOD, c->fd, &ev) == 0)
		c->want_out = on;
}

/* Writes what nghttp2 has to send, coalesced into TLS records of up to H2_OUT_CAP. */
static bool conn_flush(struct h2_conn *c)
{
	for (;;) {
		while (c->out_len < H2_OUT_CAP) {
			if (c->pend_len == 0) {
				ssize_t n = nghttp2_session_mem_send(c->ng, &c->pend);
				if (n < 0)
					return false;
				if (n == 0)
					break;
				c->pend_len = (size_t)n;
			}
			size_t k = H2_OUT_CAP - c->out_len;
			if (k > c->pend_len)
				k = c->pend_len;
			memcpy(c->out + c->out_len, c->pend, k);
			c->out_len += k;
			c->pend += k;
			c->pend_len -= k;
		}
		if (c->out_len == 0) {
			want_out(c, false);
			return nghttp2_session_want_read(c->ng) ||
			       nghttp2_session_want_write(c->ng);
		}
		ERR_clear_error();
		int w = SSL_write(c->ssl, c->out + c->out_off, (int)(c->out_len - c->out_off));
		if (w <= 0) {
			int e = SSL_get_error(c->ssl, w);
			if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
				want_out(c, true);
				return true;
			}
			return false;
		}
		c->out_off += (size_t)w;
		if (c->out_off == c->out_len)
			c->out_off = c->out_len = 0;
	}
}

static bool conn_start_session(struct h2_conn *c)
{
	const unsigned char *alpn = NULL;
	unsigned alpn_len = 0;
	SSL_get0_alpn_selected(c->ssl, &alpn, &alpn_len);
	if (alpn_len != 2 || memcmp(alpn, "h2", 2) != 0)
		return false;
	if (nghttp2_session_server_new(&c->ng, h2.cbs, c) != 0)
		return false;
	const nghttp2_settings_entry iv[] = {
	    {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, H2_MAX_STREAMS},
	    {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2_WINDOW},
	};
	return nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, iv, 2) == 0 &&
	       nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, H2_WINDOW) == 0;
}

/* Handshake, then reads; false when the connection is finished. */
static bool conn_read(struct h2_conn *c)
{
	if (!c->ng) {
		ERR_clear_error();
		int rc = SSL_accept(c->ssl);
		if (rc != 1) {
			int e = SSL_get_error(c->ssl, rc);
			return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
		}
		if (!conn_start_session(c))
			return false;
	}
	uint8_t buf[16384];
	for (;;) {
		ERR_clear_error();
		int n = SSL_read(c->ssl, buf, sizeof(buf));
		if (n <= 0) {
			int e = SSL_get_error(c->ssl, n);
			return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
		}
		if (nghttp2_session_mem_recv(c->ng, buf, (size_t)n) < 0)
			return false;
	}
}

static void accept_all(void)
{
	for (;;) {
		int fd = accept4(h2.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return; /* EAGAIN, or out of descriptors: the next wake-up retries */
		int one = 1;
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct h2_conn *c = calloc(1, sizeof(*c));
		SSL *ssl = SSL_new(h2.ctx);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
		if (!c || !ssl || SSL_set_fd(ssl, fd) != 1 ||
		    epoll_ctl(h2.ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
			SSL_free(ssl);
			free(c);
			close(fd);
			continue;
		}
		SSL_set_accept_state(ssl);
		c->fd = fd;
		c->ssl = ssl;
		c->next = h2.conns;
		if (h2.conns)
			h2.conns->prev = c;
		h2.conns = c;
		gs_ledger_connection_accepted();
	}
}

/* ---- the loop ---- */

/* fault_cut_busiest_h2_every_s: returns the next time it is due (0: off, or due now and
 * waiting for a connection with streams in flight). */
static int64_t cut_busiest(int64_t now)
{
	gs_lock();
	double every_s = gs.k.cut_busiest_h2_every_s;
	gs_unlock();
	if (every_s <= 0) {
		h2.next_cut = 0;
		return 0;
	}
	int64_t every_ms = (int64_t)(every_s * 1000);
	if (h2.next_cut == 0 || h2.next_cut > now + every_ms)
		h2.next_cut = now + every_ms;
	if (now < h2.next_cut)
		return h2.next_cut;
	struct h2_conn *busiest = NULL;
	for (struct h2_conn *c = h2.conns; c; c = c->next)
		if (c->n_streams > 0 && (!busiest || c->n_streams > busiest->n_streams))
			busiest = c;
	if (!busiest)
		return 0; /* due: the first connection with streams in flight gets it */
	conn_close(busiest, true);
	gs_ledger_connection_cut();
	h2.next_cut = now + every_ms;
	return h2.next_cut;
}

static void serve_due(int64_t now)
{
	while (h2.n > 0 && h2.heap[0]->due <= now) {
		struct h2_stream *s = heap_pop();
		if (s->conn)
			respond(s->conn, s);
		else
			stream_free(s); /* its connection went away while it waited */
	}
	while (h2.dirty) {
		struct h2_conn *c = h2.dirty;
		h2.dirty = c->dirty_next;
		c->dirty = false;
		if (!conn_flush(c))
			conn_close(c, false);
	}
}

static int wait_ms(int64_t now, int64_t cut_at)
{
	int64_t wake = now + H2_IDLE_MS;
	if (h2.n > 0 && h2.heap[0]->due < wake)
		wake = h2.heap[0]->due;
	if (cut_at && cut_at < wake)
		wake = cut_at;
	return wake > now ? (int)(wake - now) : 0;
}

static void *h2_main(void *arg)
{
	(void)arg;
	struct epoll_event evs[H2_EVENTS];
	for (;;) {
		int64_t now = gs_mono_ms();
		int64_t cut_at = cut_busiest(now);
		serve_due(now);
		int n = epoll_wait(h2.ep, evs, H2_EVENTS, wait_ms(gs_mono_ms(), cut_at));
		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;
			if (p == &h2.wake_fd)
				return NULL;
			if (p == &h2.lfd) {
				accept_all();
				continue;
			}
			struct h2_conn *c = p;
			if ((evs[i].events & (EPOLLERR | EPOLLHUP)) || !conn_read(c) ||
			    (c->ng && !conn_flush(c)))
				conn_close(c, false);
		}
	}
}

/* ---- start, stop ---- */

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
	(void)ssl;
	(void)arg;
	if (nghttp2_select_next_protocol((unsigned char **)out, outlen, in, inlen) != 1)
		return SSL_TLSEXT_ERR_ALERT_FATAL; /* HTTP/2 only: no_application_protocol */
	return SSL_TLSEXT_ERR_OK;
}

static bool tls_init(const char *cert, const char *key)
{
	h2.ctx = SSL_CTX_new(TLS_server_method());
	if (!h2.ctx)
		return false;
	SSL_CTX_set_min_proto_version(h2.ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(h2.ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_mode(h2.ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
	                             SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                             SSL_MODE_RELEASE_BUFFERS);
	SSL_CTX_set_alpn_select_cb(h2.ctx, alpn_select, NULL);
	if (SSL_CTX_use_certificate_chain_file(h2.ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(h2.ctx, key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_check_private_key(h2.ctx) != 1) {
		fprintf(stderr, "graph-sim: cannot use --tls-cert/--tls-key: %s\n",
		        ERR_reason_error_string(ERR_get_error()));
		return false;
	}
	return true;
}

static bool callbacks_init(void)
{
	if (nghttp2_session_callbacks_new(&h2.cbs) != 0)
		return false;
	nghttp2_session_callbacks_set_on_begin_headers_callback(h2.cbs, on_begin_headers);
	nghttp2_session_callbacks_set_on_header_callback(h2.cbs, on_header);
	nghttp2_session_callbacks_set_on_data_chunk_recv_callback(h2.cbs, on_data);
	nghttp2_session_callbacks_set_on_frame_recv_callback(h2.cbs, on_frame);
	nghttp2_session_callbacks_set_on_stream_close_callback(h2.cbs, on_close);
	return true;
}

static bool listen_on(const char *addr, char *url, size_t url_cap)
{
	struct sockaddr_in sa;
	socklen_t salen = sizeof(sa);
	char host[64];
	int one = 1;
	if (!gs_parse_listen(addr, &sa, host)) {
		fprintf(stderr, "graph-sim: --listen wants IPv4:PORT, got '%s'\n", addr);
		return false;
	}
	h2.lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (h2.lfd < 0 || setsockopt(h2.lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    bind(h2.lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(h2.lfd, 4096) != 0 ||
	    getsockname(h2.lfd, (struct sockaddr *)&sa, &salen) != 0) {
		fprintf(stderr, "graph-sim: cannot listen on %s: %s\n", addr, strerror(errno));
		return false;
	}
	snprintf(url, url_cap, "https://%s:%u", host, ntohs(sa.sin_port));
	return true;
}

bool gs_h2_start(const char *addr, const char *cert, const char *key, char *url, size_t url_cap)
{
	if (!tls_init(cert, key) || !callbacks_init() || !listen_on(addr, url, url_cap))
		return false;
	h2.ep = epoll_create1(EPOLL_CLOEXEC);
	h2.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	struct epoll_event lev = {.events = EPOLLIN, .data.ptr = &h2.lfd};
	struct epoll_event wev = {.events = EPOLLIN, .data.ptr = &h2.wake_fd};
	if (h2.ep < 0 || h2.wake_fd < 0 || epoll_ctl(h2.ep, EPOLL_CTL_ADD, h2.lfd, &lev) != 0 ||
	    epoll_ctl(h2.ep, EPOLL_CTL_ADD, h2.wake_fd, &wev) != 0 ||
	    pthread_create(&h2.th, NULL, h2_main, NULL) != 0) {
		fprintf(stderr, "graph-sim: cannot start the HTTP/2 front: %s\n", strerror(errno));
		return false;
	}
	h2.started = true;
	return true;
}

void gs_h2_stop(void)
{
	if (h2.started) {
		uint64_t one = 1;
		if (write(h2.wake_fd, &one, sizeof(one)) != (ssize_t)sizeof(one))
			fprintf(stderr, "graph-sim: cannot wake the HTTP/2 thread\n");
		pthread_join(h2.th, NULL);
		h2.started = false;
	}
	while (h2.conns)
		conn_close(h2.conns, false);
	while (h2.n > 0)
		stream_free(heap_pop());
	free(h2.heap);
	h2.heap = NULL;
	if (h2.cbs)
		nghttp2_session_callbacks_del(h2.cbs);
	SSL_CTX_free(h2.ctx);
	const int fds[] = {h2.ep, h2.lfd, h2.wake_fd};
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
}
