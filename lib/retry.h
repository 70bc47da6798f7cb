/*
 * retry.h - classification of Graph call outcomes and the backoff between attempts.
 *
 * Pure logic: no I/O, no clocks (times are milliseconds passed in by the caller), no global
 * state (the jitter PRNG's state belongs to the caller). Safe from any thread as long as each
 * thread uses its own rng_state.
 */
#ifndef CHATPROV_RETRY_H
#define CHATPROV_RETRY_H

#include "common.h"

enum retry_class {
	RETRY_SUCCESS,   /* 2xx */
	RETRY_TRANSIENT, /* 408, 500, 502, 503, 504, no response, connection errors, timeouts */
	RETRY_THROTTLED, /* 429: tell the scheduler, honour Retry-After, retry */
	RETRY_AUTH,      /* 401: refresh the token, retry */
	RETRY_PERMANENT, /* any other status; curl errors that no retry can fix */
};

/*
 * Classifies one attempt. curl_code is the CURLcode of the transfer (0 = CURLE_OK: a response
 * arrived and http_status is its status). Any other CURLcode is transient (connection refused or
 * reset, timeouts, TLS handshakes that broke, ...) except the few that mean the request itself
 * can never be sent (malformed URL, unsupported protocol, bad option): those are permanent.
 */
enum retry_class retry_classify(long http_status, int curl_code);

/* "success", "transient", "throttled", "auth", "permanent": for logs and metrics labels. */
const char *retry_class_name(enum retry_class c);

struct retry_policy {
	unsigned max_attempts;  /* total attempts, the first included; 0 is treated as 1 */
	int64_t base_delay_ms;  /* cap of the first retry's delay */
	int64_t max_delay_ms;   /* cap of any single delay */
	int64_t max_elapsed_ms; /* no attempt starts later than first attempt + this; <= 0: none */
};

/*
 * Delay before retry number `attempt` (1 = the first retry): full jitter, uniform in
 * [0, min(max_delay, base * 2^(attempt-1))]. *rng_state is any 64-bit seed; it is advanced.
 */
int64_t retry_backoff_ms(const struct retry_policy *p, unsigned attempt, uint64_t *rng_state);

/*
 * Delay before the next attempt after `attempts_done` attempts, given the server's Retry-After
 * (<= 0: none): the larger of the jittered backoff and Retry-After, so a retry never lands
 * inside an advertised Retry-After window.
 */
int64_t retry_next_delay_ms(const struct retry_policy *p, unsigned attempts_done,
                            int64_t retry_after_ms, uint64_t *rng_state);

/*
 * True if one more attempt is allowed: fewer than max_attempts done, and the attempt would
 * start (now + next_delay) no later than first_attempt + max_elapsed.
 */
bool retry_may_retry(const struct retry_policy *p, unsigned attempts_done, int64_t first_attempt_ms,
                     int64_t now_ms, int64_t next_delay_ms);

/*
 * What a refusal of POST /chats (a 4xx that retry_classify calls permanent) calls for. Two
 * refusals are usual in onboarding and say something about time or setup, not the request:
 *   404: a member Teams does not know yet. A new account takes seconds to minutes to
 *        replicate from Entra ID to Teams, so the request is retried on a budget of its own
 *        ([retry] not_found_s), apart from max_attempts and max_elapsed_s.
 *   403: the application lacks a permission in that tenant (admin consent for Chat.Create
 *        not granted yet). No retry helps; the operator must be told, once per tenant.
 */
enum retry_refusal {
	RETRY_REFUSAL_FINAL,     /* fail now with Graph's error */
	RETRY_REFUSAL_NOT_FOUND, /* 404: wait for the member, then try again */
	RETRY_REFUSAL_FORBIDDEN, /* 403: fail; the tenant's consent is missing */
};

enum retry_refusal retry_classify_refusal(long http_status);

/* The 404 budget: how long, and how often, a request waits for its members. */
struct retry_not_found_policy {
	int64_t budget_ms;     /* after the first 404; <= 0: fail at the first one */
	int64_t base_delay_ms; /* the wait after the first 404 */
	int64_t max_delay_ms;  /* waits double up to this */
};

/*
 * The wait before trying again after the `count`-th 404 of a request (1 = the first one,
 * which came at first_404_ms): base * 2^(count-1), capped at max_delay, less up to a quarter
 * of jitter, and never past the budget (the last try is at first_404 + budget). -1 when
 * the budget is spent: the request fails with Graph's error.
 */
int64_t retry_not_found_delay_ms(const struct retry_not_found_policy *p, unsigned count,
                                 int64_t first_404_ms, int64_t now_ms, uint64_t *rng_state);

/* splitmix64: the PRNG behind the jitter, exposed for tests and for seeding per thread. */
uint64_t retry_rng_next(uint64_t *state);

#endif
