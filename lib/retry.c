/* retry.c - outcome classification, full-jitter exponential backoff, Retry-After parsing. */
#include "retry.h"

#include <curl/curl.h>

/* CURLcodes that say the request could not even be built: retrying sends the same thing. */
static bool curl_code_is_permanent(int code)
{
	switch (code) {
	case CURLE_UNSUPPORTED_PROTOCOL:
	case CURLE_FAILED_INIT:
	case CURLE_URL_MALFORMAT:
	case CURLE_NOT_BUILT_IN:
	case CURLE_BAD_FUNCTION_ARGUMENT:
	case CURLE_UNKNOWN_OPTION:
		return true;
	default:
		return false;
	}
}

enum retry_class retry_classify(long http_status, int curl_code)
{
	if (curl_code != CURLE_OK)
		return curl_code_is_permanent(curl_code) ? RETRY_PERMANENT : RETRY_TRANSIENT;
	if (http_status >= 200 && http_status <= 299)
		return RETRY_SUCCESS;
	switch (http_status) {
	case 0: /* transfer "completed" without a status line: nothing was answered */
	case 408:
	case 500:
	case 502:
	case 503:
	case 504:
		return RETRY_TRANSIENT;
	case 429:
		return RETRY_THROTTLED;
	case 401:
		return RETRY_AUTH;
	default:
		return RETRY_PERMANENT;
	}
}

const char *retry_class_name(enum retry_class c)
{
	switch (c) {
	case RETRY_SUCCESS:
		return "success";
	case RETRY_TRANSIENT:
		return "transient";
	case RETRY_THROTTLED:
		return "throttled";
	case RETRY_AUTH:
		return "auth";
	case RETRY_PERMANENT:
		return "permanent";
	}
	return "unknown";
}

uint64_t retry_rng_next(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* min(max_delay, base * 2^(attempt-1)) without overflow; never negative. */
static int64_t backoff_cap(const struct retry_policy *p, unsigned attempt)
{
	int64_t base = p->base_delay_ms > 0 ? p->base_delay_ms : 0;
	int64_t max = p->max_delay_ms > 0 ? p->max_delay_ms : 0;
	int64_t cap = base;
	for (unsigned i = 1; i < attempt && cap < max; i++)
		cap = cap > INT64_MAX / 2 ? INT64_MAX : cap * 2;
	return cap < max ? cap : max;
}

int64_t retry_backoff_ms(const struct retry_policy *p, unsigned attempt, uint64_t *rng_state)
{
	int64_t cap = backoff_cap(p, attempt == 0 ? 1 : attempt);
	/* 53 random bits scaled to [0, cap + 1), floored: uniform over the cap + 1 integers. */
	double u = (double)(retry_rng_next(rng_state) >> 11) * 0x1.0p-53;
	int64_t d = (int64_t)(u * ((double)cap + 1.0));
	return d > cap ? cap : d;
}

int64_t retry_next_delay_ms(const struct retry_policy *p, unsigned attempts_done,
                            int64_t retry_after_ms, uint64_t *rng_state)
{
	int64_t d = retry_backoff_ms(p, attempts_done, rng_state);
	return retry_after_ms > d ? retry_after_ms : d;
}

bool retry_may_retry(const struct retry_policy *p, unsigned attempts_done, int64_t first_attempt_ms,
                     int64_t now_ms, int64_t next_delay_ms)
{
	unsigned max_attempts = p->max_attempts ? p->max_attempts : 1;
	if (attempts_done >= max_attempts)
		return false;
	if (p->max_elapsed_ms <= 0)
		return true;
	int64_t start = now_ms + (next_delay_ms > 0 ? next_delay_ms : 0);
	return start - first_attempt_ms <= p->max_elapsed_ms;
}

enum retry_refusal retry_classify_refusal(long http_status)
{
	switch (http_status) {
	case 404:
		return RETRY_REFUSAL_NOT_FOUND;
	case 403:
		return RETRY_REFUSAL_FORBIDDEN;
	default:
		return RETRY_REFUSAL_FINAL;
	}
}

int64_t retry_not_found_delay_ms(const struct retry_not_found_policy *p, unsigned count,
                                 int64_t first_404_ms, int64_t now_ms, uint64_t *rng_state)
{
	int64_t left = first_404_ms + p->budget_ms - now_ms;
	if (p->budget_ms <= 0 || left <= 0)
		return -1;
	struct retry_policy doubling = {.base_delay_ms = p->base_delay_ms,
	                                .max_delay_ms = p->max_delay_ms};
	int64_t cap = backoff_cap(&doubling, count == 0 ? 1 : count);
	/* Jitter spreads the retries of a bulk run without making a wait much shorter. */
	double u = (double)(retry_rng_next(rng_state) >> 11) * 0x1.0p-53;
	int64_t delay = cap - (int64_t)(u * (double)cap / 4);
	return delay < left ? delay : left;
}
