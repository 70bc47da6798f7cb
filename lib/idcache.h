/*
 * idcache.h - object ids of users named by UPN, per tenant, for the group-chat lookup.
 *
 * Graph lists chat members by object id and mail, never by UPN, so a lookup resolves each
 * member named by UPN (GET /users/{upn}?$select=id). The answers are kept for ttl_ms, at
 * most `capacity` of them; when full, the least recently used goes. One per worker thread:
 * no lock.
 */
#ifndef CHATPROV_IDCACHE_H
#define CHATPROV_IDCACHE_H

#include "common.h"

struct idcache;

/* False when out of memory or capacity is 0. */
bool idcache_new(size_t capacity, int64_t ttl_ms, struct idcache **out) CP_MUSTCHECK;
void idcache_free(struct idcache *c);

/* The object id (a GUID) of upn in tenant, copied to id[37], if known and fresh. */
bool idcache_get(struct idcache *c, const char *tenant, const char *upn, int64_t now_ms,
                 char id[37]) CP_MUSTCHECK;

/* Remembers upn's object id in tenant. False: out of memory (nothing is kept). */
bool idcache_put(struct idcache *c, const char *tenant, const char *upn, const char *id,
                 int64_t now_ms) CP_MUSTCHECK;

/* Entries held, fresh or not. */
size_t idcache_count(const struct idcache *c);

#endif
