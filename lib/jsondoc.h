/*
 * jsondoc.h - one JSON document from outside (an event, a Graph answer), parsed strictly.
 *
 * json-c's tokener, STRICT and VALIDATE_UTF8, with a nesting limit; the whole buffer must be
 * one JSON value, whitespace around it allowed. Each thread keeps its tokeners (one per depth
 * asked for) and resets them between documents: a tokener is a calloc of over 1 KiB, and
 * making one per Graph answer was 3-6 % of a worker's CPU, plus the glibc fastbin
 * consolidation its size triggers (docs/performance.md). A thread's tokeners are freed when it
 * exits (a pthread key destructor).
 */
#ifndef CHATPROV_JSONDOC_H
#define CHATPROV_JSONDOC_H

#include <json-c/json.h>

#include "common.h"

enum jsondoc_status {
	JSONDOC_OK,
	JSONDOC_NO_MEMORY,
	JSONDOC_INVALID,   /* not JSON at `offset`: `what` says why (json-c's words) */
	JSONDOC_TRUNCATED, /* the input ends inside the value */
	JSONDOC_TRAILING,  /* something follows the value, at `offset` */
};

struct jsondoc_error {
	enum jsondoc_status status;
	size_t offset;
	const char *what; /* static text */
};

/*
 * The value in buf[0..len) (len > 0, no NUL byte expected: the caller checks), nested at most
 * depth deep; the caller owns it (json_object_put). NULL with *err filled otherwise.
 */
json_object *jsondoc_parse(const char *buf, size_t len, int depth,
                           struct jsondoc_error *err) CP_MUSTCHECK;

#endif
