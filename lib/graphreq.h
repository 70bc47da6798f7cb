/*
 * graphreq.h - builds what chatprovd sends to Microsoft Graph: the POST /chats body, the
 * bind URLs inside it, the client-request-id, the operation URL from a 202's Location and
 * the crash-recovery lookup URL.
 *
 * Everything taken from an event is escaped for its place, so no event can change a
 * request's target: user ids become OData string literals ('' for ') and are then
 * percent-encoded outside [A-Za-z0-9-._~@']; JSON strings are written by json-c.
 */
#ifndef CHATPROV_GRAPHREQ_H
#define CHATPROV_GRAPHREQ_H

#include "common.h"
#include "event.h"

/* Longest URL these builders produce or accept. */
#define GRAPHREQ_URL_MAX 4096

/*
 * The namespace of client-request-id UUIDs (UUIDv5, SHA-1):
 * uuid5(NAMESPACE_URL, "urn:chatprov:client-request-id").
 */
#define GRAPHREQ_CLIENT_REQUEST_NS "e949fd02-0f89-5c91-a657-043613fb51a9"

/*
 * The JSON body of POST /chats, as in Microsoft's create-chat examples. bind_root is
 * "{graph root}/{version}", e.g. "https://graph.microsoft.com/beta". Returns malloc'd text
 * (free it), NULL when out of memory or when an id cannot be bound.
 */
char *graphreq_chat_body(const struct event_request *ev, const char *bind_root) CP_MUSTCHECK;

/*
 * "{bind_root}/users('{X}')" where X is user_id as an OData string literal, percent-encoded.
 * False when user_id is empty or the result does not fit cap.
 */
bool graphreq_user_bind_url(const char *bind_root, const char *user_id, char *out,
                            size_t cap) CP_MUSTCHECK;

/*
 * "{version_root}/chats('{X}')", X the chat id as an OData string literal, percent-encoded:
 * where a chat made by an async operation is read back (its webUrl, createdDateTime).
 */
bool graphreq_chat_url(const char *version_root, const char *chat_id, char *out,
                       size_t cap) CP_MUSTCHECK;

/*
 * "{version_root}/chats('{X}')/members": every member of a chat, where a lookup settles a
 * candidate whose list was capped at 25 members (graphresp.h).
 */
bool graphreq_chat_members_url(const char *version_root, const char *chat_id, char *out,
                               size_t cap) CP_MUSTCHECK;

/* The client-request-id of an event: lower-case UUIDv5 of event_id in the namespace above. */
bool graphreq_client_request_id(const char *event_id, char out[37]) CP_MUSTCHECK;

/*
 * The URL to poll for a 202's Location, or to read a lookup's next page from an
 * "@odata.nextLink". version_root is "{base_url}/{version}". A relative
 * Location ("/chats('…')/operations('…')") is appended to version_root. An absolute one is
 * accepted only with version_root's scheme, host and port, no user info, and a path under
 * version_root's path; the result is then version_root + the rest, so the host written in
 * the output is always version_root's. Anything else is refused: other hosts, "//host",
 * backslashes, "..", "%2e", whitespace, control or non-ASCII bytes, '#', over
 * GRAPHREQ_URL_MAX.
 */
bool graphreq_resolve_location(const char *version_root, const char *location, char *out,
                               size_t cap) CP_MUSTCHECK;

/*
 * The crash-recovery query for a group chat: "{version_root}/users('{owner}')/chats?
 * $filter=topic%20eq%20'{topic}'&$expand=members", owner and topic escaped as OData
 * literals and percent-encoded.
 */
bool graphreq_lookup_url(const char *version_root, const char *owner_user_id, const char *topic,
                         char *out, size_t cap) CP_MUSTCHECK;

/*
 * The object id of a user named by UPN: "{version_root}/users('{user}')?$select=id", user
 * escaped as an OData literal and percent-encoded.
 */
bool graphreq_user_id_url(const char *version_root, const char *user, char *out,
                          size_t cap) CP_MUSTCHECK;

#endif
