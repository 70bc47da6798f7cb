/*
 * kafka-mock - librdkafka's mock cluster (rdkafka_mock.h) served on loopback.
 *
 * Prints "BOOTSTRAP <list>" once the brokers listen, then answers fault-injection commands
 * from stdin (see commands.c) until SIGTERM/SIGINT, "quit" or end of stdin, and exits 0.
 * Signals are blocked in every thread (librdkafka's threads inherit the mask) and read
 * from a signalfd in the one poll loop, so no work happens in a signal handler.
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmock.h"

#define MAX_TOPICS 64

struct options {
	long brokers;
	const char *topics[MAX_TOPICS];
	int topic_cnt;
	const char *bootstrap_file;
	bool no_stdin;
};

/* Pending stdin bytes that do not yet form a complete line. */
struct linebuf {
	char data[KMOCK_LINE_MAX];
	size_t len;
	bool overflow; /* discarding the rest of an over-long line */
};

static void usage(FILE *out)
{
	fputs("Usage: kafka-mock [--brokers N] [--topic NAME:PARTITIONS[:compact]]...\n"
	      "                  [--bootstrap-file PATH] [--no-stdin]\n"
	      "Runs librdkafka's mock Kafka cluster on 127.0.0.1 and prints\n"
	      "'BOOTSTRAP host:port,...' on stdout. Stops on SIGTERM, SIGINT, 'quit' or end of\n"
	      "stdin (--no-stdin: signals only). Commands on stdin, one reply line each:\n"
	      "  broker down|up ID          rtt ID MS\n"
	      "  push-errors APIKEY ERR[,ERR...]   clear-errors APIKEY\n"
	      "  create-topic NAME PARTITIONS     leader TOPIC PARTITION BROKERID\n"
	      "  coordinator group|transaction NAME BROKERID\n"
	      "  bootstrap                  quit\n",
	      out);
}

/* Returns 0 to run, 1 on a usage error, 2 after --help. */
static int parse_options(int argc, char **argv, struct options *o)
{
	static const struct option longopts[] = {
	    {"brokers", required_argument, NULL, 'b'},
	    {"topic", required_argument, NULL, 't'},
	    {"bootstrap-file", required_argument, NULL, 'f'},
	    {"no-stdin", no_argument, NULL, 'n'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	int c;

	while ((c = getopt_long(argc, argv, "b:t:f:nh", longopts, NULL)) != -1) {
		switch (c) {
		case 'b':
			if (!kmock_parse_long(optarg, 1, KMOCK_BROKERS_MAX, &o->brokers)) {
				fprintf(stderr, "kafka-mock: --brokers must be 1..%d\n",
				        KMOCK_BROKERS_MAX);
				return 1;
			}
			break;
		case 't':
			if (o->topic_cnt == MAX_TOPICS) {
				fprintf(stderr, "kafka-mock: at most %d --topic\n", MAX_TOPICS);
				return 1;
			}
			o->topics[o->topic_cnt++] = optarg;
			break;
		case 'f':
			o->bootstrap_file = optarg;
			break;
		case 'n':
			o->no_stdin = true;
			break;
		case 'h':
			usage(stdout);
			return 2;
		default:
			usage(stderr);
			return 1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "kafka-mock: unexpected argument '%s'\n", argv[optind]);
		return 1;
	}
	return 0;
}

static bool cluster_start(struct kmock *km, const struct options *o)
{
	char errstr[CP_ERRSTR_SIZE];
	rd_kafka_conf_t *conf = rd_kafka_conf_new();

	/* The handle only hosts the cluster and never connects anywhere: its notice about
	 * the missing bootstrap.servers is noise, warnings and errors still show. */
	if (rd_kafka_conf_set(conf, "client.id", "kafka-mock", errstr, sizeof(errstr)) !=
	        RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof(errstr)) != RD_KAFKA_CONF_OK) {
		fprintf(stderr, "kafka-mock: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return false;
	}
	km->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (!km->rk) {
		fprintf(stderr, "kafka-mock: rd_kafka_new: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return false;
	}
	km->broker_cnt = (int)o->brokers;
	km->mcluster = rd_kafka_mock_cluster_new(km->rk, km->broker_cnt);
	if (!km->mcluster) {
		fprintf(stderr, "kafka-mock: could not create the mock cluster\n");
		return false;
	}
	for (int i = 0; i < o->topic_cnt; i++) {
		char name[KMOCK_TOPIC_MAX + 1];
		int parts;

		if (!kmock_parse_topic_spec(o->topics[i], name, sizeof(name), &parts, errstr,
		                            sizeof(errstr)) ||
		    !kmock_create_topic(km, name, parts, errstr, sizeof(errstr))) {
			fprintf(stderr, "kafka-mock: %s\n", errstr);
			return false;
		}
	}
	return true;
}

static void cluster_stop(struct kmock *km)
{
	if (km->mcluster)
		rd_kafka_mock_cluster_destroy(km->mcluster);
	if (km->rk)
		rd_kafka_destroy(km->rk);
}

/* Readers poll for the file, so it must appear complete or not at all: write a temporary
 * file in the same directory and rename it into place. */
static bool write_bootstrap_file(const char *path, const char *bootstrap)
{
	char tmp[4096];
	FILE *f = NULL;
	int fd = -1;

	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp)) {
		fprintf(stderr, "kafka-mock: bootstrap file path too long\n");
		return false;
	}
	fd = mkstemp(tmp);
	if (fd < 0)
		goto fail;
	f = fdopen(fd, "w");
	if (!f)
		goto fail;
	fd = -1;
	if (fchmod(fileno(f), 0644) != 0 || fprintf(f, "%s\n", bootstrap) < 0)
		goto fail;
	if (fclose(f) != 0) {
		f = NULL;
		goto fail;
	}
	f = NULL;
	if (rename(tmp, path) != 0)
		goto fail;
	return true;
fail:
	fprintf(stderr, "kafka-mock: writing %s: %s\n", path, strerror(errno));
	if (f)
		fclose(f);
	if (fd >= 0)
		close(fd);
	unlink(tmp);
	return false;
}

/* Replies go to a test harness that waits for them: one line, flushed at once. */
static bool say(const char *line)
{
	return puts(line) >= 0 && fflush(stdout) == 0;
}

/* Answers every complete line in lb; false when stdout is gone. */
static bool run_lines(struct kmock *km, struct linebuf *lb, bool *quit)
{
	char reply[KMOCK_LINE_MAX];
	char *start = lb->data;
	char *nl;

	while ((nl = memchr(start, '\n', lb->len - (size_t)(start - lb->data)))) {
		*nl = '\0';
		if (lb->overflow) {
			snprintf(reply, sizeof(reply), "ERR line longer than %d bytes",
			         KMOCK_LINE_MAX - 1);
			lb->overflow = false;
		} else if (kmock_command(km, start, reply, sizeof(reply)) == KMOCK_QUIT) {
			*quit = true;
		}
		start = nl + 1;
		if (!say(reply))
			return false;
		if (*quit)
			return true;
	}
	lb->len -= (size_t)(start - lb->data);
	memmove(lb->data, start, lb->len);
	if (lb->len == sizeof(lb->data)) {
		/* No newline in a full buffer: drop it and answer once the line ends. */
		lb->overflow = true;
		lb->len = 0;
	}
	return true;
}

enum io_state { IO_MORE, IO_END, IO_FAIL };

/* Reads what stdin has and answers every complete line. */
static enum io_state read_stdin(struct kmock *km, struct linebuf *lb, bool *quit)
{
	ssize_t n = read(STDIN_FILENO, lb->data + lb->len, sizeof(lb->data) - lb->len);

	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return IO_MORE;
	if (n < 0) {
		perror("kafka-mock: reading stdin");
		return IO_FAIL;
	}
	if (n == 0) {
		/* A last command without its newline still counts. */
		if (lb->len > 0 && lb->len < sizeof(lb->data)) {
			lb->data[lb->len++] = '\n';
			if (!run_lines(km, lb, quit))
				return IO_FAIL;
		}
		return IO_END;
	}
	lb->len += (size_t)n;
	return run_lines(km, lb, quit) ? IO_MORE : IO_FAIL;
}

static int serve(struct kmock *km, int sigfd, bool use_stdin)
{
	static struct linebuf lb;
	struct pollfd fds[2] = {{.fd = sigfd, .events = POLLIN},
	                        {.fd = use_stdin ? STDIN_FILENO : -1, .events = POLLIN}};
	bool quit = false;

	while (!quit) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			perror("kafka-mock: poll");
			return 1;
		}
		if (fds[0].revents) {
			struct signalfd_siginfo si;

			if (read(sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si))
				fprintf(stderr, "kafka-mock: %s, stopping\n",
				        strsignal((int)si.ssi_signo));
			return 0;
		}
		if (fds[1].revents) {
			enum io_state st = read_stdin(km, &lb, &quit);

			if (st != IO_MORE)
				return st == IO_END ? 0 : 1;
		}
	}
	return 0;
}

/* Blocks the stop signals in this thread before librdkafka starts its threads, which
 * inherit the mask, and returns a signalfd that reports them. */
static int stop_signals_fd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
		return -1;
	/* A vanished reader of stdout must become a write error, not a silent death. */
	signal(SIGPIPE, SIG_IGN);
	return signalfd(-1, &set, SFD_CLOEXEC);
}

int main(int argc, char **argv)
{
	struct options o = {.brokers = 1};
	struct kmock km = {0};
	char line[KMOCK_LINE_MAX];
	bool written = false;
	int rc = 1, sigfd;

	switch (parse_options(argc, argv, &o)) {
	case 0:
		break;
	case 2:
		return 0;
	default:
		return 1;
	}
	sigfd = stop_signals_fd();
	if (sigfd < 0) {
		perror("kafka-mock: signalfd");
		return 1;
	}
	if (!cluster_start(&km, &o))
		goto out;
	snprintf(line, sizeof(line), "BOOTSTRAP %s", rd_kafka_mock_cluster_bootstraps(km.mcluster));
	if (o.bootstrap_file) {
		if (!write_bootstrap_file(o.bootstrap_file,
		                          rd_kafka_mock_cluster_bootstraps(km.mcluster)))
			goto out;
		written = true;
	}
	if (say(line))
		rc = serve(&km, sigfd, !o.no_stdin);
out:
	/* The brokers are about to vanish; a stale address would only mislead. */
	if (written)
		unlink(o.bootstrap_file);
	cluster_stop(&km);
	close(sigfd);
	return rc;
}
