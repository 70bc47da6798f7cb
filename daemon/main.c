/*
 * main.c - chatprovd: command line, signals, systemd notifications, and the main loop.
 *
 * Everything that does work lives in libchatprov; this file only wires it together.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cfg.h"
#include "cptime.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "pipeline.h"

#define POLL_MS         100
#define STATUS_EVERY_MS 1000
/* A drain waits for transfers in flight: at most one request timeout, plus room to commit. */
#define DRAIN_SLACK_MS 10000
/* pipeline_finish: the producer flush, then room for the final commit and leaving the group. */
#define FINISH_BUDGET_MS (PIPELINE_FLUSH_MS + 5000)

struct options {
	const char *config;
	bool check_config;
};

struct daemon {
	/* The configuration the pipeline was built with (its fixed keys hold until exit) and
	 * the one last loaded; cfg == boot_cfg until the first reload. */
	struct cfg *boot_cfg, *cfg;
	struct metrics *metrics;
	struct pipeline *pipeline;
	struct notify_watchdog watchdog;
	int signal_fd;
	bool ready, draining;
	int64_t drain_deadline_ms, last_status_ms;
	char last_status[512];
};

static void usage(FILE *out)
{
	fprintf(out, "Usage: chatprovd --config FILE [--check-config]\n"
	             "       chatprovd --version | --help\n\n"
	             "Provisions Microsoft Teams chats from Kafka events.\n\n"
	             "  -c, --config FILE    configuration file (INI)\n"
	             "      --check-config   validate the configuration, print it (secrets\n"
	             "                       masked) and exit 0, or print the error and exit 1\n"
	             "  -V, --version        print the version and exit\n"
	             "  -h, --help           print this help and exit\n");
}

/* 0: run; 1: exit 0 now (help, version); -1: usage error. */
static int parse_args(int argc, char **argv, struct options *opt)
{
	enum { OPT_CHECK = 256 };
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, OPT_CHECK},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "c:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			opt->config = optarg;
			break;
		case OPT_CHECK:
			opt->check_config = true;
			break;
		case 'V':
			printf("chatprovd %s\n", CHATPROV_VERSION);
			return 1;
		case 'h':
			usage(stdout);
			return 1;
		default:
			usage(stderr);
			return -1;
		}
	}
	if (optind < argc || !opt->config) {
		usage(stderr);
		return -1;
	}
	return 0;
}

/* Signals become readable events on a signalfd; no code runs in a handler. */
static int open_signal_fd(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	/* Blocked before any thread starts, so every thread inherits the mask. */
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	signal(SIGPIPE, SIG_IGN);
	return signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
}

static void apply_log_level(const struct cfg *cfg)
{
	enum log_level level;
	if (log_parse_level(cfg->log.level, &level))
		log_set_level(level);
}

/*
 * RELOADING=1 ... READY=1. READY=1 is only repeated if the daemon was ready before: a
 * SIGHUP while starting must not announce readiness the pipeline has not reached (report()
 * sends it when it has).
 */
static void reload(struct daemon *d)
{
	char err[CP_ERRSTR_SIZE], restart[1024];
	struct cfg *next = NULL;
	if (d->draining) {
		log_notice("SIGHUP while stopping: ignored");
		return;
	}
	notify_reloading();
	log_notice("SIGHUP: reloading %s", d->cfg->path);
	if (!cfg_load(d->cfg->path, &next, err, sizeof err)) {
		log_error("reload failed, keeping the running configuration: %s", err);
		goto done;
	}
	cfg_restart_needed(d->cfg, next, restart, sizeof restart);
	if (!pipeline_reload(d->pipeline, next)) {
		log_error("reload failed: tenant profiles changed; restart to apply");
		cfg_free(next);
		goto done;
	}
	if (restart[0])
		log_warning("reloaded; these keys need a restart to take effect: %s", restart);
	else
		log_notice("reloaded");
	apply_log_level(next);
	/* The replaced configuration is referenced by nobody now, unless it is the boot one. */
	if (d->cfg != d->boot_cfg)
		cfg_free(d->cfg);
	d->cfg = next;
done:
	if (d->ready)
		notify_ready();
}

static void begin_drain(struct daemon *d)
{
	const struct cfg *cfg = d->boot_cfg; /* the request timeout the workers use */
	int64_t budget = (int64_t)(cfg->graph.request_timeout_s * 1000) + DRAIN_SLACK_MS;
	notify_stopping();
	/* The drain and the finish may outlast TimeoutStopSec=; systemd keeps the later deadline.
	 */
	notify_extend_timeout((uint64_t)(budget + FINISH_BUDGET_MS) * 1000);
	log_notice("stopping: draining in-flight requests (at most %lld ms)", (long long)budget);
	d->draining = true;
	d->drain_deadline_ms = cptime_mono_ms() + budget;
	metrics_set_ready(d->metrics, false, "stopping");
	pipeline_begin_drain(d->pipeline);
}

/* false: leave the loop at once (a second stop signal). */
static bool handle_signals(struct daemon *d)
{
	struct signalfd_siginfo si;
	while (read(d->signal_fd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGHUP) {
			reload(d);
			continue;
		}
		if (d->draining) {
			log_warning("second stop signal: exiting without draining");
			return false;
		}
		begin_drain(d);
	}
	return true;
}

/* STATUS= with live counters, sent when it changed (at most once per STATUS_EVERY_MS). */
static void send_status(struct daemon *d, bool ready)
{
	struct pipeline_counters c;
	char text[sizeof d->last_status];
	pipeline_counters(d->pipeline, &c);
	char lag[32] = "unknown", eta[48] = "unknown";
	if (c.lag >= 0)
		snprintf(lag, sizeof lag, "%lld", (long long)c.lag);
	if (c.backlog_eta_s >= 0)
		cptime_format_duration(c.backlog_eta_s, eta, sizeof eta);
	snprintf(text, sizeof text,
	         "%s; in flight %zu, queued %zu, in memory %zu; succeeded %llu, failed %llu, "
	         "rejected %llu, consumed %llu; throttled %llu, lag %s; backlog %lld, ETA %s%s",
	         d->draining ? "draining"
	         : ready     ? "running"
	                     : "starting",
	         c.active, c.queued, c.in_memory, (unsigned long long)c.succeeded,
	         (unsigned long long)c.failed, (unsigned long long)c.rejected,
	         (unsigned long long)c.consumed, (unsigned long long)c.throttled, lag,
	         (long long)c.backlog, eta, c.paused ? ", paused" : "");
	if (strcmp(text, d->last_status) == 0)
		return;
	memcpy(d->last_status, text, sizeof text);
	notify_status("%s", text);
}

/* WATCHDOG=1 while the workers and the Kafka thread make progress. */
static void kick_watchdog(struct daemon *d, int64_t now)
{
	int64_t max_age = notify_watchdog_interval_ms(&d->watchdog);
	notify_watchdog_kick(&d->watchdog, now,
	                     pipeline_progressing(d->pipeline, now, max_age > 0 ? max_age : 5000));
}

/* From inside the Kafka thread's long waits (restore, fetch, hand-over). */
static void kick_while_waiting(void *arg)
{
	kick_watchdog(arg, cptime_mono_ms());
}

static void report(struct daemon *d, int64_t now)
{
	bool ready = pipeline_ready(d->pipeline);
	if (ready && !d->ready && !d->draining) {
		notify_ready();
		metrics_set_ready(d->metrics, true, NULL);
		log_notice("ready: group joined, Graph token held");
	} else if (!ready && d->ready && !d->draining) {
		metrics_set_ready(d->metrics, false, "waiting for Kafka group or Graph token");
	}
	d->ready = ready;
	kick_watchdog(d, now);
	if (now - d->last_status_ms < STATUS_EVERY_MS)
		return;
	d->last_status_ms = now;
	send_status(d, ready);
}

/* Returns the exit code. */
static int run(struct daemon *d)
{
	for (;;) {
		if (!pipeline_poll(d->pipeline, POLL_MS))
			return EXIT_FAILURE;
		if (!handle_signals(d))
			return EXIT_FAILURE;
		int64_t now = cptime_mono_ms();
		report(d, now);
		if (d->draining && pipeline_drained(d->pipeline))
			return EXIT_SUCCESS;
		if (d->draining && now > d->drain_deadline_ms) {
			log_warning("drain deadline reached: unfinished requests are handed back");
			return EXIT_SUCCESS;
		}
	}
}

static bool start(struct daemon *d)
{
	char err[CP_ERRSTR_SIZE];
	if (!metrics_new(0, &d->metrics, err, sizeof err) ||
	    !metrics_listen(d->metrics, d->cfg->metrics.listen, err, sizeof err)) {
		log_error("metrics: %s", err);
		return false;
	}
	if (metrics_port(d->metrics))
		log_notice("metrics on port %u", (unsigned)metrics_port(d->metrics));
	metrics_set_ready(d->metrics, false, "starting");
	if (!pipeline_new(d->cfg, d->metrics, &d->pipeline, err, sizeof err) ||
	    !pipeline_start(d->pipeline, err, sizeof err)) {
		log_error("%s", err);
		return false;
	}
	notify_watchdog_init(&d->watchdog);
	pipeline_set_wait_hook(d->pipeline, kick_while_waiting, d);
	notify_status("starting: joining the consumer group, fetching a Graph token");
	log_notice("chatprovd %s started: %s -> %s via %s", CHATPROV_VERSION,
	           d->cfg->kafka.input_topic, d->cfg->kafka.output_topic, d->cfg->graph.base_url);
	return true;
}

int main(int argc, char **argv)
{
	struct options opt = {0};
	int rc = parse_args(argc, argv, &opt);
	if (rc != 0)
		return rc > 0 ? EXIT_SUCCESS : EXIT_FAILURE;

	if (opt.check_config)
		return cfg_check(opt.config, stdout, stderr);
	log_init("chatprovd");
	/* Before anything else: a stop signal that arrives while we start is handled by the
	 * loop like any other, never by the default action. */
	struct daemon d = {.signal_fd = open_signal_fd()};
	if (d.signal_fd < 0) {
		log_error("cannot set up signal handling: %s", strerror(errno));
		return EXIT_FAILURE;
	}
	/* Secrets and tokens live in this process's memory: keep them out of core dumps. */
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	char err[CP_ERRSTR_SIZE];
	if (!cfg_load(opt.config, &d.cfg, err, sizeof err)) {
		fprintf(stderr, "chatprovd: %s\n", err);
		return EXIT_FAILURE;
	}
	d.boot_cfg = d.cfg;
	apply_log_level(d.cfg);
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
		log_error("cannot initialise libcurl");
		return EXIT_FAILURE;
	}
	rc = start(&d) ? run(&d) : EXIT_FAILURE;
	if (d.pipeline && rc == EXIT_SUCCESS) {
		notify_extend_timeout((uint64_t)FINISH_BUDGET_MS * 1000);
		pipeline_finish(d.pipeline);
	}
	/* No scrape may run into a pipeline being freed: the endpoint stops first. */
	metrics_stop(d.metrics);
	pipeline_free(d.pipeline);
	metrics_free(d.metrics);
	if (d.cfg != d.boot_cfg)
		cfg_free(d.cfg);
	cfg_free(d.boot_cfg);
	curl_global_cleanup();
	close(d.signal_fd);
	log_notice("exiting with status %d", rc);
	return rc;
}
