/* chatreq.c - the request of one event: roots, tenant profile, client-request-id, body. */
#include "chatreq.h"

#include <stdio.h>

#include "graphreq.h"
#include "job.h"

_Static_assert(CHATREQ_URL_MAX == JOB_URL_MAX, "the roots are copied into URL buffers of JOB_URL_MAX");

bool chatreq_roots(const struct cfg *cfg, struct chatreq_roots *out)
{
	const char *version = cfg->graph.api_version;
	return snprintf(out->version_root, sizeof out->version_root, "%s/%s", cfg->graph.base_url,
	                version) < (int)sizeof out->version_root &&
	       snprintf(out->bind_root, sizeof out->bind_root, "%s/%s", cfg->graph.graph_root,
	                version) < (int)sizeof out->bind_root &&
	       snprintf(out->chats_url, sizeof out->chats_url, "%s/chats", out->version_root) <
	           (int)sizeof out->chats_url;
}

struct event_limits chatreq_event_limits(const struct cfg *cfg)
{
	return (struct event_limits){.max_message_bytes = cfg->kafka.max_message_bytes,
	                             .max_members = cfg->graph.max_members,
	                             .max_topic_length = cfg->graph.max_topic_length};
}

bool chatreq_prepare(const struct cfg *cfg, const char *bind_root, const struct event_request *ev,
                     struct chatreq *out, char *reason, size_t cap)
{
	out->body = NULL;
	int tenant = cfg_tenant_index(cfg, ev->tenant);
	if (tenant < 0) {
		snprintf(reason, cap, "tenant: no profile named '%s' is configured", ev->tenant);
		return false;
	}
	out->tenant = (size_t)tenant;
	if (!graphreq_client_request_id(ev->id, out->client_request_id)) {
		snprintf(reason, cap, "id: cannot derive client-request-id");
		return false;
	}
	out->body = graphreq_chat_body(ev, bind_root);
	if (!out->body) {
		snprintf(reason, cap, "cannot build the Graph request body");
		return false;
	}
	return true;
}
