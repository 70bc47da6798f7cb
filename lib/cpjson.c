/*
 * cpjson.c - building JSON with json-c when every allocation may fail.
 */
#include "cpjson.h"

bool cpjson_put(json_object *obj, const char *key, json_object *val)
{
	if (!val)
		return false;
	if (json_object_object_add(obj, key, val) != 0) {
		json_object_put(val);
		return false;
	}
	return true;
}
