/*
 * fuzz_graphresp.c - every Graph response parser on the same input: chat, operation,
 * error, lookup (members by UPN, mail or object id; a 26-member query for the capped member
 * lists of candidates), members and user. Properties: no crash, and every string field filled
 * is terminated within its record.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "graphresp.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define TERMINATED(f) (memchr((f), '\0', sizeof(f)) != NULL)
#define LARGE_GROUP   (GRAPHRESP_EXPAND_MEMBERS_MAX + 1)

/* A query of more members than a chat list names: "u0@contoso.com".."u25@contoso.com". */
static const struct graphresp_lookup_query *large_query(void)
{
	static char names[LARGE_GROUP][24];
	static const char *ids[LARGE_GROUP];
	static struct graphresp_lookup_query q = {.topic = "Welcome", .n_user_ids = LARGE_GROUP};
	if (!q.user_ids) {
		for (int i = 0; i < LARGE_GROUP; i++) {
			snprintf(names[i], sizeof names[i], "u%d@contoso.com", i);
			ids[i] = names[i];
		}
		q.user_ids = ids;
	}
	return &q;
}

static void check_large(const char *body, size_t size)
{
	char err[128];
	bool match;
	struct graphresp_lookup_result r;
	if (graphresp_parse_lookup(body, size, large_query(), &r, err, sizeof err)) {
		size_t kept = r.n_candidates < GRAPHRESP_LOOKUP_CANDIDATES
		                  ? r.n_candidates
		                  : GRAPHRESP_LOOKUP_CANDIDATES;
		for (size_t i = 0; i < kept; i++)
			if (!r.candidates[i].id[0] || !TERMINATED(r.candidates[i].topic))
				abort();
	}
	if (graphresp_parse_members(body, size, large_query(), &match, err, sizeof err) && match &&
	    size < 26 * 10)
		abort(); /* 26 members cannot fit in fewer bytes */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > FUZZ_MAX_INPUT)
		return 0;
	const char *body = (const char *)data;
	char err[128];
	struct graphresp_chat chat;
	if (graphresp_parse_chat(body, size, &chat, err, sizeof err) &&
	    (!chat.id[0] || !TERMINATED(chat.web_url) || !TERMINATED(chat.topic)))
		abort();
	struct graphresp_operation op;
	if (graphresp_parse_operation(body, size, &op, err, sizeof err) &&
	    (!TERMINATED(op.status_text) || !TERMINATED(op.error_message) || op.attempts_count < 0))
		abort();
	struct graphresp_error ge;
	if (graphresp_parse_error(body, size, &ge) && (!ge.code[0] || !TERMINATED(ge.message)))
		abort();
	static const char *const ids[] = {"8c0a1a67-50ce-4114-bb6c-da9c5dbcf6ca",
	                                  "alex@contoso.com", "jane.doe@contoso.onmicrosoft.com"};
	static const char *const oids[] = {NULL, NULL, "3626a173-f2bc-4883-bcf7-01514c3bfb82"};
	struct graphresp_lookup_query q = {
	    .topic = "Welcome", .user_ids = ids, .n_user_ids = 3, .created_after_ms = 0};
	struct graphresp_lookup_result r;
	for (int with_oids = 0; with_oids < 2; with_oids++) {
		q.object_ids = with_oids ? oids : NULL;
		if (graphresp_parse_lookup(body, size, &q, &r, err, sizeof err) &&
		    (r.found != (r.matches > 0) || (r.found && !r.chat.id[0]) ||
		     !TERMINATED(r.next_link)))
			abort();
	}
	check_large(body, size);
	struct graphresp_user user;
	if (graphresp_parse_user(body, size, &user, err, sizeof err) && strlen(user.id) != 36)
		abort();
	return 0;
}
