/*
 * graph-sim - a Microsoft Graph + Entra ID simulator (see docs/graph-sim.md).
 *
 * Prints "LISTEN <url>" once it accepts connections and runs until SIGTERM or SIGINT,
 * then exits 0. Signals are blocked in every thread and taken with sigwait in main, so
 * no work happens in a signal handler.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "gsim.h"

struct options {
	const char *listen;
	const char *config;
	const char *tls_cert, *tls_key;
	unsigned threads;
	bool http2;
};

static void usage(FILE *out)
{
	fputs("Usage: graph-sim [--listen IP:PORT] [--config FILE.json] [--threads N]\n"
	      "                 [--tls-cert PEM --tls-key PEM [--http2]]\n"
	      "Simulates Microsoft Graph (POST /chats, operations, lookups) and the Entra ID\n"
	      "token endpoints on IP:PORT (default 127.0.0.1:0, an ephemeral port) and prints\n"
	      "'LISTEN <url>'. Knobs: --config or POST /_sim/config. Stops on SIGTERM/SIGINT.\n"
	      "--http2: IP:PORT speaks HTTP/2 over TLS only (ALPN h2); a second line\n"
	      "'CONTROL <url>' names a plain HTTP/1.1 port serving the same (for /_sim/).\n",
	      out);
}

/* Returns 0 to run, 1 on a usage error, 2 after --help. */
static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
	    {"listen", required_argument, NULL, 'l'},
	    {"config", required_argument, NULL, 'c'},
	    {"tls-cert", required_argument, NULL, 'C'},
	    {"tls-key", required_argument, NULL, 'K'},
	    {"threads", required_argument, NULL, 't'},
	    {"http2", no_argument, NULL, '2'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	char *end;
	while ((c = getopt_long(argc, argv, "l:c:t:h", longopts, NULL)) != -1) {
		switch (c) {
		case 'l':
			o->listen = optarg;
			break;
		case 'c':
			o->config = optarg;
			break;
		case 'C':
			o->tls_cert = optarg;
			break;
		case 'K':
			o->tls_key = optarg;
			break;
		case 't': {
			long n = strtol(optarg, &end, 10);
			if (*end || end == optarg || n < 1 || n > 64) {
				fprintf(stderr, "graph-sim: --threads must be 1..64\n");
				return 1;
			}
			o->threads = (unsigned)n;
			break;
		}
		case '2':
			o->http2 = true;
			break;
		case 'h':
			usage(stdout);
			return 2;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind < argc || !o->tls_cert != !o->tls_key || (o->http2 && !o->tls_cert)) {
		usage(stderr);
		return 1;
	}
	return 0;
}

static bool load_config(const char *path)
{
	char err[256];
	json_object *o = json_object_from_file(path);
	if (!o) {
		fprintf(stderr, "graph-sim: %s: %s\n", path, json_util_get_last_err());
		return false;
	}
	bool ok = gs_knobs_apply(o, err, sizeof(err));
	if (!ok)
		fprintf(stderr, "graph-sim: %s: %s\n", path, err);
	json_object_put(o);
	return ok;
}

/* A thousand suspended requests need a thousand sockets. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		(void)setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	struct options o = {.listen = "127.0.0.1:0", .threads = 2};
	char url[128], control[128];
	int sig, rc = 1;
	sigset_t set;
	int p = parse_options(argc, argv, &o);
	if (p)
		return p == 2 ? 0 : 1;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	if (!gs_knobs_init() || !gs_auth_init() || !gs_jwt_init() || !gs_chats_init()) {
		fprintf(stderr, "graph-sim: out of memory\n");
		goto out;
	}
	gs_lock();
	gs_throttle_reset_locked();
	gs_unlock();
	if (o.config && !load_config(o.config))
		goto out;
	if (o.http2) {
		if (!gs_h2_start(o.listen, o.tls_cert, o.tls_key, url, sizeof(url)) ||
		    !gs_http_start("127.0.0.1:0", NULL, NULL, o.threads, control, sizeof(control)))
			goto stop;
		printf("LISTEN %s\nCONTROL %s\n", url, control);
	} else {
		if (!gs_http_start(o.listen, o.tls_cert, o.tls_key, o.threads, url, sizeof(url)))
			goto out;
		printf("LISTEN %s\n", url);
	}
	fflush(stdout);
	sigwait(&set, &sig);
	rc = 0;
stop:
	gs_h2_stop();
	gs_http_stop();
out:
	gs_chats_shutdown();
	gs_jwt_shutdown();
	gs_auth_shutdown();
	gs_knobs_shutdown();
	return rc;
}
