/*
 * job.h - one input event on its way through the pipeline.
 *
 * A job is created by the Kafka poll thread for every consumed message, travels through the
 * scheduler and an HTTP worker, and is destroyed by the poll thread once its result has been
 * acknowledged by the broker. Exactly one thread owns a job at any time, so its fields need
 * no lock: ownership is handed over through the scheduler's queue and the producer.
 */
#ifndef CHATPROV_JOB_H
#define CHATPROV_JOB_H

#include <librdkafka/rdkafka.h>

#include "common.h"
#include "event.h"

struct graphresp_chat;

#define JOB_URL_MAX      2048
#define JOB_ID_MAX       256
#define JOB_ERR_CODE_MAX 128
#define JOB_ERR_MSG_MAX  1024

/* JOB_ABANDONED: its partition was revoked; it goes away without a result. */
enum job_status { JOB_PENDING, JOB_SUCCEEDED, JOB_FAILED, JOB_REJECTED, JOB_ABANDONED };
/* JOB_PHASE_CHAT: the operation made the chat; its details are being read back. */
enum job_phase { JOB_PHASE_CREATE, JOB_PHASE_POLL, JOB_PHASE_CHAT };

/*
 * A group-chat lookup in progress (worker.c): the object ids of members named by UPN, then
 * the pages of the owner's chats. Lives from the first lookup request to its answer.
 */
struct job_lookup {
	char (*object_ids)[37]; /* per member: its object id once resolved, "" if none */
	size_t resolved;        /* members whose object id has been asked for (or is not needed) */
	char *next_page;        /* the "@odata.nextLink" to read next; NULL: the first page */
	unsigned pages;         /* pages read */
	unsigned failures;      /* lookup requests that failed transiently: a budget of its own */
	int64_t first_failure_mono_ms;
	/* A page's candidates (graphresp.h: chats whose member list was capped at 25), settled
	 * one by one by their full member list; then the page's next link, if any. */
	struct graphresp_chat *candidates;
	size_t n_candidates, next_candidate;
	char *after_candidates;
};

/*
 * Large or rare strings are allocated when needed: tens of thousands of jobs can be in
 * memory at once, and most never need a Location or an error message.
 */
struct job {
	/* Where it came from: the offset counts as done once the result is acknowledged. */
	int32_t partition;
	int64_t offset;
	uint64_t generation; /* the partition's assignment generation when it was consumed */
	void *key;
	size_t key_len;
	rd_kafka_headers_t *headers; /* copy of the input headers, carried to the result */
	void *payload;               /* the input value, kept for a DLQ copy (job_keep_payload) */
	size_t payload_len;
	struct job *next_follower; /* a duplicate of an id in progress waits for its result */

	/* What to do (NULL for a rejected event). */
	struct event_request *ev;
	size_t tenant; /* credential profile index */
	char client_request_id[37];
	char *body; /* the POST /chats body, built once */

	/* Progress. */
	enum job_phase phase;
	unsigned attempts;           /* POSTs sent, throttled ones included */
	unsigned transient_failures; /* what the retry budget counts: 429s are the scheduler's */
	bool auth_retried;           /* a 401 has been answered with one refresh already */
	bool needs_lookup;           /* a group-chat POST may have succeeded: look before posting */
	unsigned chat_reads;         /* JOB_PHASE_CHAT: GETs of the chat tried */
	unsigned not_found_retries;  /* 404s waited out: [retry] not_found_s is their budget */
	int64_t not_found_since_mono_ms; /* the first 404 */
	int64_t intent_wall_ms;          /* when the first POST may have been sent */
	int64_t unsure_post_wall_ms;     /* when the last POST whose outcome is unknown left */
	bool answer_lost; /* ...and got no answer (or a 504, or a crash): a 202 may run */
	int64_t received_wall_ms;
	int64_t first_attempt_mono_ms;
	int64_t held_since_mono_ms; /* first held for lack of a token (credentials failing) */
	int64_t op_started_mono_ms;
	int64_t op_deadline_mono_ms;
	int64_t next_poll_mono_ms;
	char *op_url; /* the operation's absolute URL, once a 202 gave one */
	struct job_lookup *lookup;

	/* Outcome. */
	enum job_status status;
	long http_status;
	char graph_request_id[64];
	char chat_id[JOB_ID_MAX];
	char *chat_web_url;
	char chat_created[64];
	char op_id[JOB_ID_MAX];
	char op_status[32];
	int op_attempts;
	char err_code[JOB_ERR_CODE_MAX];
	char *err_message;
	bool err_retryable;
	char *rejected_id; /* best-effort id of an invalid event */
	int64_t completed_wall_ms;

	/* Deliveries still outstanding before the offset is done (result, state, DLQ copy). */
	int pending_deliveries;
	unsigned delivery_failures; /* delivery reports with an error, over all its records */
	size_t memory_bytes;        /* what it counts against [kafka] max_queued_bytes */
	bool result_queued;         /* its result is in the producer: counted as awaiting ack */
};

/* Copies key and headers of msg; the job owns them. NULL on allocation failure. */
bool job_new(const rd_kafka_message_t *msg, uint64_t generation, struct job **out) CP_MUSTCHECK;
void job_free(struct job *job);

/* Keeps a copy of msg's value, so that a failed request can be copied to the DLQ as it came. */
bool job_keep_payload(struct job *job, const rd_kafka_message_t *msg) CP_MUSTCHECK;

/*
 * A failed group chat that may exist all the same: a POST whose answer was lost, a 202
 * operation not seen to its end, a 201 without a usable chat. A re-drive looks it up first.
 */
bool job_chat_may_exist(const struct job *job);

/* Frees a lookup's state and clears job->lookup. */
void job_lookup_end(struct job *job);

/* Records a final failure (code as Graph names it where there is one). */
void job_fail(struct job *job, long http_status, const char *code, const char *message,
              bool retryable);

/* Replaces *field with a copy of value (NULL or "" clears it). False: out of memory. */
bool job_set_string(char **field, const char *value) CP_MUSTCHECK;

/* The request id: of the event, or the best guess for a rejected one (may be NULL). */
const char *job_id(const struct job *job);

#endif
