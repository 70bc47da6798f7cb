/*
 * result.h - the chatprov.result.v1 document published for every request.
 */
#ifndef CHATPROV_RESULT_H
#define CHATPROV_RESULT_H

#include "common.h"
#include "job.h"

/*
 * Renders the result of a finished job (status succeeded, failed or rejected) as JSON.
 * Returns a malloc'd string of *len bytes, or NULL on allocation failure.
 */
char *result_render(const struct job *job, size_t *len) CP_MUSTCHECK;

/* The job's status as the contract spells it ("succeeded", "failed", "rejected"). */
const char *result_status_name(enum job_status status);

#endif
