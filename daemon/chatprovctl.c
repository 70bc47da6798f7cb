/*
 * chatprovctl.c - the operator's command: plan a run before it starts, watch it while it
 * runs, re-drive failed requests from the DLQ. Same configuration file as chatprovd.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl.h"
#include "log.h"

#ifndef CHATPROV_DEFAULT_CONFIG
#define CHATPROV_DEFAULT_CONFIG "/etc/chatprov/chatprovd.conf"
#endif

static void usage(FILE *out)
{
	fprintf(out,
	        "Usage: chatprovctl [--config FILE] COMMAND [OPTIONS]\n"
	        "       chatprovctl --version | --help\n\n"
	        "The operator's command for chatprovd; reads chatprovd's configuration\n"
	        "(default " CHATPROV_DEFAULT_CONFIG ").\n\n"
	        "Commands:\n"
	        "  plan [--format json|text] [--from-topic] [FILE|-]\n"
	        "        validate events and print the exact Graph requests, per-tenant counts\n"
	        "        and the ETA under [limits]; sends nothing\n"
	        "  status [--watch] [--interval SECONDS]\n"
	        "        the running daemon's progress per tenant and the backlog's ETA\n"
	        "  redrive [--status failed|rejected] [--code CODE] [--tenant NAME]\n"
	        "          [--since RFC3339] [--limit N] [--dry-run]\n"
	        "        copy matching DLQ records back to the input topic\n\n"
	        "Exit status: 0 success, 1 a failure it reports, 2 usage.\n"
	        "See chatprovctl(1).\n");
}

struct command {
	const char *name;
	int (*run)(const char *config_path, int argc, char **argv);
};

static const struct command commands[] = {
    {"plan", ctl_plan},
    {"status", ctl_status},
    {"redrive", ctl_redrive},
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *config = CHATPROV_DEFAULT_CONFIG;
	int c;
	/* "+": options stop at the command; the command parses its own. */
	while ((c = getopt_long(argc, argv, "+c:Vh", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			config = optarg;
			break;
		case 'V':
			printf("chatprovctl %s\n", CHATPROV_VERSION);
			return CTL_OK;
		case 'h':
			usage(stdout);
			return CTL_OK;
		default:
			usage(stderr);
			return CTL_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return CTL_USAGE;
	}
	const struct command *cmd = NULL;
	for (size_t i = 0; i < CP_ARRAY_LEN(commands); i++)
		if (strcmp(argv[optind], commands[i].name) == 0)
			cmd = &commands[i];
	if (!cmd) {
		fprintf(stderr, "chatprovctl: unknown command '%s'\n", argv[optind]);
		usage(stderr);
		return CTL_USAGE;
	}
	log_init("chatprovctl");
	log_set_level(LOG_LVL_WARNING);
	int first = optind;
	optind = 0; /* the command parses argv + first afresh; its argv[0] is its name */
	return cmd->run(config, argc - first, argv + first);
}

struct cfg *ctl_load_config(const char *path)
{
	char err[CP_ERRSTR_SIZE];
	struct cfg *cfg = NULL;
	if (!cfg_load(path, &cfg, err, sizeof err)) {
		fprintf(stderr, "chatprovctl: %s\n", err);
		return NULL;
	}
	return cfg;
}

bool ctl_parse_count(const char *text, long long min, long long max, long long *out)
{
	char *end;
	errno = 0;
	long long v = strtoll(text, &end, 10);
	if (errno || end == text || *end != '\0' || v < min || v > max)
		return false;
	*out = v;
	return true;
}
