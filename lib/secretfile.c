/*
 * secretfile.c - reading a secret from a file (see secretfile.h).
 */
#include "secretfile.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Reads until end of file or until the buffer holds one byte more than its limit. */
static bool read_all(int fd, struct dynbuf *out)
{
	char chunk[4096];
	ssize_t got;
	bool ok = true;
	while ((got = read(fd, chunk, sizeof chunk)) > 0 || (got < 0 && errno == EINTR)) {
		if (got > 0 && !dynbuf_add(out, chunk, (size_t)got))
			break;
	}
	if (got < 0)
		ok = false;
	OPENSSL_cleanse(chunk, sizeof chunk);
	return ok;
}

bool secretfile_read(const char *path, size_t max, const char *trim, struct dynbuf *out, char *err,
                     size_t errcap)
{
	struct stat st;
	dynbuf_init_secret(out, max);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0 || fstat(fd, &st) != 0) {
		snprintf(err, errcap, "%s: cannot read secret: %s", path, strerror(errno));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errcap, "%s: secret is not a regular file", path);
		goto fail;
	}
	if (!read_all(fd, out)) {
		snprintf(err, errcap, "%s: cannot read secret: %s", path, strerror(errno));
		goto fail;
	}
	if (dynbuf_too_big(out)) {
		snprintf(err, errcap, "%s: secret file is larger than %zu bytes", path, max);
		goto fail;
	}
	if (!dynbuf_ok(out)) {
		snprintf(err, errcap, "%s: cannot read secret: out of memory", path);
		goto fail;
	}
	size_t len = dynbuf_len(out);
	const char *text = dynbuf_str(out);
	while (len > 0 && strchr(trim, text[len - 1]) && text[len - 1] != '\0')
		len--;
	if (len == 0) {
		snprintf(err, errcap, "%s: secret file is empty", path);
		goto fail;
	}
	dynbuf_truncate(out, len);
	close(fd);
	return true;
fail:
	dynbuf_wipe(out);
	if (fd >= 0)
		close(fd);
	return false;
}
