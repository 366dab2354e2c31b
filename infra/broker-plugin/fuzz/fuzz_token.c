/*
 * libFuzzer over the whole token path: size, split, base64url, header, kid, ES256
 * signature, claims, time, the revocation hook, ACL parsing, and ACL evaluation on
 * the tokens that verify (the seed corpus holds valid tokens signed with the key in
 * fuzz_key.h, so mutations start from deep inside the accepted path).
 *
 *   make fuzz && build/fuzz_token -max_total_time=300 fuzz/corpus
 *
 * The clock, username and client id are fixed so a seed stays valid (make_corpus.py).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "fuzz_key.h"
#include "token.h"

#define FUZZ_NOW 1764460000
#define FUZZ_USERNAME "sess.fuzz"
#define FUZZ_CLIENTID "fuzz-client"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct amora_keyring g_keys;

static bool revoked(void *ctx, const char *username, time_t now)
{
	(void)ctx;
	(void)now;
	return strcmp(username, "sess.revoked") == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const topics[] = {
		"amora/devices/d1/state", "amora/devices/d1/commands", "amora/devices/d2/state",
		"amora/devices/+/state", "amora/#", "#", "$SYS/broker/uptime", "$CONTROL/amora-auth/v1", "",
	};
	static const int accesses[] = {
		AMORA_ACCESS_READ, AMORA_ACCESS_WRITE, AMORA_ACCESS_SUBSCRIBE, AMORA_ACCESS_UNSUBSCRIBE, 0x10,
	};
	struct amora_verifier v = {
		.keys = &g_keys, .issuer = "amora-authz", .audience = "amora-broker",
		.revoked = revoked, .revoked_ctx = NULL,
	};
	struct amora_acl acl;
	const char *reason = NULL;
	long long exp = 0;
	unsigned char scratch[64];
	char err[256];

	if(g_keys.count == 0 && amora_keyring_load_pem(&g_keys, FUZZ_PUBLIC_KEY, strlen(FUZZ_PUBLIC_KEY), err, sizeof(err)) != 0){
		fprintf(stderr, "fuzz key: %s\n", err);
		abort();
	}
	/* The decoder on its own, bounded output. */
	(void)amora_b64url_decode((const char *)data, size, scratch, sizeof(scratch));
	if(amora_token_verify(&v, (const char *)data, size, FUZZ_USERNAME, FUZZ_CLIENTID, FUZZ_NOW, &acl, &exp, &reason) == 0){
		if(reason != NULL || exp <= FUZZ_NOW) abort(); /* success must be complete */
		for(size_t t = 0; t < sizeof(topics) / sizeof(topics[0]); t++){
			for(size_t a = 0; a < sizeof(accesses) / sizeof(accesses[0]); a++){
				bool allowed = amora_acl_allows(&acl, accesses[a], topics[t], mosquitto_topic_matches_sub);
				/* Invariants the plugin relies on, whatever the token says. */
				if(allowed && topics[t][0] == '$' && accesses[a] != AMORA_ACCESS_UNSUBSCRIBE) abort();
				if(allowed && accesses[a] == 0x10) abort();
			}
		}
		amora_acl_free(&acl);
	}else{
		if(reason == NULL || acl.rules != NULL || acl.count != 0) abort(); /* failure leaves nothing */
	}
	return 0;
}
