/*
 * plan.h - `chatprovctl plan`: what chatprovd would do with a list of events, without
 * sending anything. Each event goes through the daemon's own validator (event_decode) and
 * request builder (chatreq_prepare); the summary counts chats per tenant profile and puts
 * an ETA on them with the scheduler's arithmetic (pacer_eta) under the configured [limits],
 * from a fresh start (full buckets), Graph's one-on-one dedup not assumed.
 */
#ifndef CHATPROV_PLAN_H
#define CHATPROV_PLAN_H

#include <json-c/json.h>

#include "cfg.h"
#include "common.h"

struct plan;

/* cfg must outlive the plan. False when out of memory or a Graph root is too long. */
bool plan_new(const struct cfg *cfg, struct plan **out, char *err, size_t errcap) CP_MUSTCHECK;
void plan_free(struct plan *p);

/*
 * One event (a Kafka message value or a line of a file, without its newline). *out is a new
 * object: {"id", "status": "valid", "tenant", "request": {"method", "url", "headers":
 * {"client-request-id"}, "body"}} or {"id" (null when it cannot be read), "status":
 * "rejected", "reason"}; the caller adds where the event came from. False only when out of
 * memory.
 */
bool plan_event(struct plan *p, const void *buf, size_t len, json_object **out) CP_MUSTCHECK;

/*
 * {"summary": {"events", "valid", "rejected", "tenants": {NAME: {"chats", "etaSeconds"}},
 * "etaSeconds"}} over the events seen so far. An ETA that cannot be reached (a limit of
 * zero) is null. False when out of memory.
 */
bool plan_summary(struct plan *p, json_object **out) CP_MUSTCHECK;

/* Events rejected so far. */
size_t plan_rejected(const struct plan *p);

#endif
