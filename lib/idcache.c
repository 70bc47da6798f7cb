/*
 * idcache.c - a small LRU of UPN -> object id. Lookups are rare (unknown outcomes only),
 * so a linear scan of a few hundred entries is cheaper than keeping a hash in step.
 */
#include "idcache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct idcache_entry {
	char *tenant; /* "" for the default profile */
	char *upn;
	char id[37];
	int64_t stored_ms, used_ms;
};

struct idcache {
	struct idcache_entry *v;
	size_t n, cap;
	int64_t ttl_ms;
};

bool idcache_new(size_t capacity, int64_t ttl_ms, struct idcache **out)
{
	struct idcache *c = capacity ? calloc(1, sizeof *c) : NULL;
	if (!c || !(c->v = calloc(capacity, sizeof *c->v))) {
		free(c);
		return false;
	}
	c->cap = capacity;
	c->ttl_ms = ttl_ms;
	*out = c;
	return true;
}

static void entry_clear(struct idcache_entry *e)
{
	free(e->tenant);
	free(e->upn);
	memset(e, 0, sizeof *e);
}

void idcache_free(struct idcache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->n; i++)
		entry_clear(&c->v[i]);
	free(c->v);
	free(c);
}

/* UPNs are case-insensitive in Entra ID; tenant profile names are ours, exact. */
static struct idcache_entry *find(struct idcache *c, const char *tenant, const char *upn)
{
	for (size_t i = 0; i < c->n; i++)
		if (strcmp(c->v[i].tenant, tenant) == 0 && strcasecmp(c->v[i].upn, upn) == 0)
			return &c->v[i];
	return NULL;
}

bool idcache_get(struct idcache *c, const char *tenant, const char *upn, int64_t now_ms,
                 char id[37])
{
	struct idcache_entry *e = find(c, tenant ? tenant : "", upn);
	if (!e || now_ms - e->stored_ms >= c->ttl_ms)
		return false;
	e->used_ms = now_ms;
	memcpy(id, e->id, sizeof e->id);
	return true;
}

/* A free slot: a new one, else the stalest or least recently used. */
static struct idcache_entry *slot(struct idcache *c, int64_t now_ms)
{
	if (c->n < c->cap)
		return &c->v[c->n++];
	struct idcache_entry *victim = &c->v[0];
	for (size_t i = 0; i < c->n; i++) {
		struct idcache_entry *e = &c->v[i];
		if (now_ms - e->stored_ms >= c->ttl_ms)
			return e;
		if (e->used_ms < victim->used_ms)
			victim = e;
	}
	return victim;
}

bool idcache_put(struct idcache *c, const char *tenant, const char *upn, const char *id,
                 int64_t now_ms)
{
	tenant = tenant ? tenant : "";
	if (strlen(id) >= sizeof c->v[0].id)
		return false;
	struct idcache_entry *e = find(c, tenant, upn);
	if (!e) {
		char *t = strdup(tenant), *u = strdup(upn);
		if (!t || !u) {
			free(t);
			free(u);
			return false;
		}
		e = slot(c, now_ms);
		entry_clear(e);
		e->tenant = t;
		e->upn = u;
	}
	snprintf(e->id, sizeof e->id, "%s", id);
	e->stored_ms = e->used_ms = now_ms;
	return true;
}

size_t idcache_count(const struct idcache *c)
{
	return c->n;
}
