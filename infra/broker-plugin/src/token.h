/*
 * Broker tokens: parsing, ES256 verification and ACL evaluation (docs: ../README.md).
 *
 * Pure functions over memory: nothing here talks to the broker, so the same code links
 * into the plugin, the fuzzer and the unit checks. Topic matching is passed in as a
 * function pointer (the broker's mosquitto_topic_matches_sub in the plugin, libmosquitto's
 * in the fuzzer).
 */
#ifndef AMORA_TOKEN_H
#define AMORA_TOKEN_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <openssl/evp.h>

/* Limits from the contract (TOKEN_SPEC): anything larger is refused before decoding. */
#define AMORA_TOKEN_MAX_BYTES 16384
#define AMORA_ACL_MAX_RULES 256
#define AMORA_TOPIC_MAX_BYTES 1024
#define AMORA_MAX_KEYS 16
/* A token issued up to this many seconds "in the future" is accepted (clock skew). */
#define AMORA_IAT_LEEWAY_S 60
/* base64url of 16 bytes, no padding, plus NUL. */
#define AMORA_KID_LEN 22

/* mosquitto's access values (mosquitto_plugin.h), repeated so this file needs no broker header. */
#define AMORA_ACCESS_READ 0x01
#define AMORA_ACCESS_WRITE 0x02
#define AMORA_ACCESS_SUBSCRIBE 0x04
#define AMORA_ACCESS_UNSUBSCRIBE 0x08

#define AMORA_ACTION_PUBLISH 0x1u
#define AMORA_ACTION_SUBSCRIBE 0x2u

struct amora_rule {
	char *topic;
	unsigned actions; /* AMORA_ACTION_* bits; "all" sets both */
	bool allow;
};

struct amora_acl {
	struct amora_rule *rules;
	size_t count;
};

struct amora_key {
	char kid[AMORA_KID_LEN + 1];
	EVP_PKEY *pkey;
};

struct amora_keyring {
	struct amora_key keys[AMORA_MAX_KEYS];
	size_t count;
};

/* What the caller checks tokens against. `revoked` may be NULL (no deny list). */
struct amora_verifier {
	const struct amora_keyring *keys;
	const char *issuer;
	const char *audience;
	bool (*revoked)(void *ctx, const char *username, time_t now);
	void *revoked_ctx;
};

/* Same contract as mosquitto_topic_matches_sub: 0 on success, *result set. */
typedef int (*amora_topic_match_fn)(const char *sub, const char *topic, bool *result);

/* Load every PEM public key in `path` (one or more; all must be EC P-256).
 * Returns 0, or -1 with a message naming the file and the fix in `err`. */
int amora_keyring_load_file(struct amora_keyring *ring, const char *path, char *err, size_t errlen);
/* Same from memory (the fuzzer's fixed key). */
int amora_keyring_load_pem(struct amora_keyring *ring, const char *pem, size_t len, char *err, size_t errlen);
void amora_keyring_free(struct amora_keyring *ring);

/* Verify `token` (the MQTT password, `len` bytes, need not be NUL-terminated) for this
 * username and client id at `now`. On success returns 0 and fills `acl` (free it with
 * amora_acl_free) and, when non-NULL, `exp`. On failure returns -1, `acl` is empty and
 * `*reason` is a static string for the log (never containing the token). */
int amora_token_verify(const struct amora_verifier *v, const char *token, size_t len,
		const char *username, const char *clientid, time_t now,
		struct amora_acl *acl, long long *exp, const char **reason);

/* First matching rule decides; no match, `$` topics and errors deny. Unsubscribe is allowed. */
bool amora_acl_allows(const struct amora_acl *acl, int access, const char *topic, amora_topic_match_fn match);
void amora_acl_free(struct amora_acl *acl);

/* Strict base64url (RFC 4648 section 5, no padding, canonical trailing bits). Writes at most
 * `outcap` bytes; returns the decoded length or -1. Exposed for the fuzzer and tests. */
long amora_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outcap);
/* Parse exactly one JSON value filling `text` (surrounding whitespace allowed): NULL for
 * anything else, trailing bytes and NULs (raw or \u0000) included. */
cJSON *amora_json_parse_exact(const char *text, size_t len);
/* Encode `len` bytes into `out` (room for len * 4 / 3 + 2 characters and the NUL). */
void amora_b64url_encode(const unsigned char *in, size_t len, char *out);

#endif
