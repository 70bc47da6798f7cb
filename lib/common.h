/*
 * common.h - the conventions every libchatprov module shares.
 *
 * Fallible functions return bool (or an enum) and are marked CP_MUSTCHECK so that the
 * compiler refuses to let a caller ignore a failure. Cleanup goes through one `goto fail`.
 */
#ifndef CHATPROV_COMMON_H
#define CHATPROV_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CP_MUSTCHECK         __attribute__((warn_unused_result))
#define CP_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define CP_UNUSED            __attribute__((unused))
#define CP_ARRAY_LEN(a)      (sizeof(a) / sizeof((a)[0]))

/* Size of the error buffers that fallible functions fill for their callers. */
#define CP_ERRSTR_SIZE 512

#endif
