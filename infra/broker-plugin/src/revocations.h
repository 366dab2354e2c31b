/*
 * The deny list: session usernames refused at CONNECT until a time (TOKEN_SPEC "Revocation").
 *
 * Kept in memory (a balanced tree keyed by username) and persisted to one JSON file,
 * `{"version":1,"synced":true,"sessions":[{"username":"sess.x","until":1764470000}, ...]}`,
 * written 0600 to a temporary file, fsynced and renamed over the old one, so a crash
 * leaves either the old or the new list, never a torn one.
 *
 * `synced`: the authz service has confirmed this list holds every revocation in force
 * (control command `synced`). Until then the plugin refuses every session login (fail
 * closed): a broker that starts without its file (first start, lost volume) would
 * otherwise accept revoked tokens. A file without the member (written before it existed)
 * was kept by a running broker, so it counts as confirmed.
 */
#ifndef AMORA_REVOCATIONS_H
#define AMORA_REVOCATIONS_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <cjson/cJSON.h>

struct amora_revocations {
	void *root; /* tsearch tree of struct amora_revocation */
	size_t count;
	char *path;
	bool synced;         /* confirmed by the authz service (logins allowed) */
	bool synced_on_disk; /* ... and that is what the file says */
	bool missing;        /* the file did not exist at load */
};

/* Read `path` (a missing file is an empty, unconfirmed list; anything else that is not a
 * well-formed list, or a file group/other can access, is an error naming the fix).
 * Entries already past their `until` are dropped. Returns 0 or -1 with `err` set. */
int amora_revocations_load(struct amora_revocations *r, const char *path, time_t now, char *err, size_t errlen);
void amora_revocations_free(struct amora_revocations *r);

/* Is `username` refused at `now`? */
bool amora_revocations_active(const struct amora_revocations *r, const char *username, time_t now);
/* Refuse `username` until `until` (the later one wins when it is already listed).
 * Returns 0, or -1 when out of memory. */
int amora_revocations_add(struct amora_revocations *r, const char *username, long long until);
/* Drop entries past their `until`; returns how many were dropped. */
size_t amora_revocations_prune(struct amora_revocations *r, time_t now);
/* Persist the live entries. Returns 0, or -1 with `err` set (the memory list stays). */
int amora_revocations_save(struct amora_revocations *r, time_t now, char *err, size_t errlen);
/* The live entries as a JSON array of {"username","until"} (NULL when out of memory). */
cJSON *amora_revocations_to_json(const struct amora_revocations *r, time_t now);

#endif
