/* jsondoc.c - strict parsing of one JSON document with a per-thread reusable tokener. */
#include "jsondoc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Depths asked for by the library (events, Graph answers); a third one replaces a slot. */
#define TOKENER_SLOTS 2

struct tokeners {
	json_tokener *tok[TOKENER_SLOTS];
	int depth[TOKENER_SLOTS];
	unsigned next; /* the slot a new depth takes */
};

static pthread_key_t tokeners_key;
static pthread_once_t tokeners_once = PTHREAD_ONCE_INIT;
static bool tokeners_key_made;

static void tokeners_free(void *arg)
{
	struct tokeners *t = arg;
	for (unsigned i = 0; i < TOKENER_SLOTS; i++)
		if (t->tok[i])
			json_tokener_free(t->tok[i]);
	free(t);
}

static void make_key(void)
{
	tokeners_key_made = pthread_key_create(&tokeners_key, tokeners_free) == 0;
}

/* This thread's tokeners, made on first use; NULL without memory (or a key). */
static struct tokeners *thread_tokeners(void)
{
	(void)pthread_once(&tokeners_once, make_key);
	if (!tokeners_key_made)
		return NULL;
	struct tokeners *t = pthread_getspecific(tokeners_key);
	if (t)
		return t;
	t = calloc(1, sizeof *t);
	if (t && pthread_setspecific(tokeners_key, t) != 0) {
		free(t);
		t = NULL;
	}
	return t;
}

/* A reset tokener of this depth; NULL without memory. */
static json_tokener *tokener(int depth)
{
	struct tokeners *t = thread_tokeners();
	if (!t)
		return NULL;
	for (unsigned i = 0; i < TOKENER_SLOTS; i++) {
		if (t->tok[i] && t->depth[i] == depth) {
			json_tokener_reset(t->tok[i]);
			return t->tok[i];
		}
	}
	json_tokener *tok = json_tokener_new_ex(depth);
	if (!tok)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	unsigned slot = t->next++ % TOKENER_SLOTS;
	if (t->tok[slot])
		json_tokener_free(t->tok[slot]);
	t->tok[slot] = tok;
	t->depth[slot] = depth;
	return tok;
}

static json_object *fail(struct jsondoc_error *err, enum jsondoc_status status, size_t offset,
                         const char *what)
{
	*err = (struct jsondoc_error){.status = status, .offset = offset, .what = what};
	return NULL;
}

json_object *jsondoc_parse(const char *buf, size_t len, int depth, struct jsondoc_error *err)
{
	json_tokener *tok = tokener(depth);
	if (!tok)
		return fail(err, JSONDOC_NO_MEMORY, 0, "out of memory");
	json_object *root = json_tokener_parse_ex(tok, buf, (int)len);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t end = json_tokener_get_parse_end(tok);
	if (!root && jerr == json_tokener_continue)
		return fail(err, JSONDOC_TRUNCATED, len, "unexpected end of input");
	if (!root)
		return fail(err, JSONDOC_INVALID, end, json_tokener_error_desc(jerr));
	/* Strict json-c reports data after the value itself (JSONDOC_INVALID); this check holds
	 * whatever its flags or version. */
	while (end < len && strchr(" \t\r\n", buf[end]))
		end++;
	if (end < len) {
		json_object_put(root);
		return fail(err, JSONDOC_TRAILING, end, "data after the value");
	}
	*err = (struct jsondoc_error){.status = JSONDOC_OK};
	return root;
}
