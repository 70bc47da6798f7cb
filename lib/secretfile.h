/*
 * secretfile.h - the one reader of files that hold a secret (client secrets, federated
 * tokens): a regular file, read whole, bounded, never left in memory that is not wiped.
 */
#ifndef CHATPROV_SECRETFILE_H
#define CHATPROV_SECRETFILE_H

#include "common.h"
#include "dynbuf.h"

/*
 * Reads the regular file at path into out (made by dynbuf_init_secret with a limit of max
 * bytes), without the trailing characters found in trim. Fails, err saying
 * "PATH: why", when the file cannot be opened or read, is not a regular file, is larger than
 * max bytes, or holds nothing but trim characters. On failure out is wiped.
 */
bool secretfile_read(const char *path, size_t max, const char *trim, struct dynbuf *out, char *err,
                     size_t errcap) CP_MUSTCHECK;

#endif
