/*
 * fuzz_config.c - cfg_load over arbitrary file contents.
 *
 * The input is written to a temporary file (cfg_load reads files: that is the interface the
 * daemon uses) and loaded; success or a clean error are both fine, a crash or a leak is not.
 * Inputs are capped at 64 KiB: longer ones only repeat what shorter ones exercise.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "cfg.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char path[] = "/tmp/fuzz_config.XXXXXX";
	char err[CP_ERRSTR_SIZE];
	struct cfg *cfg = NULL;
	if (size > FUZZ_MAX_INPUT)
		return 0;
	int fd = mkstemp(path);
	if (fd < 0)
		return 0;
	size_t done = 0;
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);
		if (n <= 0)
			break;
		done += (size_t)n;
	}
	close(fd);
	if (done == size && cfg_load(path, &cfg, err, sizeof(err))) {
		/* Exercise the consumers of a loaded config too. */
		FILE *devnull = fopen("/dev/null", "w");
		if (devnull) {
			cfg_dump(cfg, devnull);
			fclose(devnull);
		}
		(void)cfg_tenant_index(cfg, "x");
		cfg_free(cfg);
	}
	unlink(path);
	return 0;
}
