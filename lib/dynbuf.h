/*
 * dynbuf.h - the one bounded text buffer of the library (after curl's dynbuf).
 *
 * A buffer has a hard limit on its length, fixed when it is made. Appends are sticky: the
 * first one that does not fit (over the limit, or out of memory) fails the buffer and every
 * later append does nothing, so a renderer writing many small pieces checks once at the end
 * (dynbuf_ok), while a caller that needs each result (a libcurl write callback) gets it from
 * the append itself. The text is always NUL-terminated.
 *
 * Three kinds: a heap buffer (dynbuf_init), a heap buffer for secrets (dynbuf_init_secret:
 * growing it never leaves a copy behind, freeing it zeroes it), and a view over the caller's
 * fixed array (dynbuf_init_fixed: never grows, never frees). Fields are private: use the
 * functions.
 */
#ifndef CHATPROV_DYNBUF_H
#define CHATPROV_DYNBUF_H

#include "common.h"

struct dynbuf {
	char *p;
	size_t len, cap;
	size_t limit; /* the most bytes of text it may hold, without the NUL */
	bool too_big; /* an append went over the limit */
	bool no_mem;  /* an allocation failed */
	bool secret;  /* wipe every block it lets go of */
	bool fixed;   /* p is the caller's array of cap bytes */
};

/* A heap buffer of at most limit bytes of text; it allocates on the first append. */
void dynbuf_init(struct dynbuf *b, size_t limit);
/* The same for secrets (tokens, passwords, request forms that carry them). */
void dynbuf_init_secret(struct dynbuf *b, size_t limit);
/* Writes into out[cap] (cap - 1 bytes of text); out becomes "" at once. */
void dynbuf_init_fixed(struct dynbuf *b, char *out, size_t cap);

/* Append n bytes, a string, or printf output. False when the buffer is (now) failed. */
bool dynbuf_add(struct dynbuf *b, const void *s, size_t n);
bool dynbuf_adds(struct dynbuf *b, const char *s);
bool dynbuf_addf(struct dynbuf *b, const char *fmt, ...) CP_PRINTF(2, 3);

/* No append failed so far. */
bool dynbuf_ok(const struct dynbuf *b);
/* An append failed because it would have passed the limit (not for lack of memory). */
bool dynbuf_too_big(const struct dynbuf *b);

/* The text ("" when empty, never NULL) and its length. */
const char *dynbuf_str(const struct dynbuf *b);
size_t dynbuf_len(const struct dynbuf *b);

/* Shortens the text to its first len bytes (a secret buffer's cut tail is zeroed). */
void dynbuf_truncate(struct dynbuf *b, size_t len);
/* Empties the buffer and clears a failure; keeps its memory (a secret one is zeroed). */
void dynbuf_reset(struct dynbuf *b);
/* Hands the heap text to the caller (free() it) and leaves the buffer empty; NULL when the
 * buffer failed, is fixed, or memory runs out. */
char *dynbuf_take(struct dynbuf *b, size_t *len) CP_MUSTCHECK;
/* Releases the memory (zeroed first for a secret buffer); the buffer stays usable, empty. */
void dynbuf_free(struct dynbuf *b);
/* Zeroes the whole block whatever the kind, then releases it like dynbuf_free. */
void dynbuf_wipe(struct dynbuf *b);

#endif
