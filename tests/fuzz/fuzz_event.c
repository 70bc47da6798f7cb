/*
 * fuzz_event.c - the chatprov.request.v1 decoder, and the body built from what it accepts.
 *
 * Properties: no crash or leak on any input; an accepted event yields a body that json-c
 * parses back; event_peek_id never returns more than it was given room for.
 */
#include <json-c/json.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "graphreq.h"

#define FUZZ_MAX_INPUT (64 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_body(const struct event_request *ev)
{
	char *body = graphreq_chat_body(ev, "https://graph.microsoft.com/v1.0");
	if (!body)
		abort();
	json_object *o = json_tokener_parse(body);
	if (!o || !json_object_is_type(o, json_type_object))
		abort();
	json_object_put(o);
	free(body);
	char crid[37];
	if (!graphreq_client_request_id(ev->id, crid) || strlen(crid) != 36)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > FUZZ_MAX_INPUT)
		return 0;
	struct event_limits lim = event_limits_default();
	struct event_request *ev = NULL;
	char reason[EVENT_REASON_SIZE];
	if (event_decode(data, size, &lim, &ev, reason, sizeof reason)) {
		check_body(ev);
		event_free(ev);
	} else if (ev != NULL || reason[0] == '\0') {
		abort(); /* a rejection always says why and returns nothing */
	}
	char id[16];
	if (event_peek_id(data, size, id, sizeof id) && strlen(id) >= sizeof id)
		abort();
	return 0;
}
