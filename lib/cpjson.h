/*
 * cpjson.h - building JSON with json-c when every allocation may fail.
 */
#ifndef CHATPROV_CPJSON_H
#define CHATPROV_CPJSON_H

#include <json-c/json.h>
#include <stdbool.h>

#include "common.h"

/* Adds val under key, taking ownership of val in every case; a NULL val (an allocation that
 * failed) is false, not JSON null. */
bool cpjson_put(json_object *obj, const char *key, json_object *val) CP_MUSTCHECK;

#endif
