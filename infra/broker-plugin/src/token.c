/*
 * Broker tokens: strict compact-JWS parsing, ES256 verification, claims and ACL.
 *
 * Nothing in here is secret (the keys are public, the token is the client's own
 * credential), so there is no constant-time concern in the comparisons; what matters is
 * that every input byte is bounded and checked before use, and that every path that is
 * not a complete success ends in a refusal. The order of the checks is the contract's
 * (size, split, header, kid, signature, claims, iss/aud, username/clientid, time,
 * revocation, ACL): nothing from the payload is trusted before the signature is checked.
 */
#define _GNU_SOURCE /* strdup, memmem */
#include "token.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

/* ---- base64url ------------------------------------------------------------------ */

static int b64url_value(unsigned char c)
{
	if(c >= 'A' && c <= 'Z') return c - 'A';
	if(c >= 'a' && c <= 'z') return c - 'a' + 26;
	if(c >= '0' && c <= '9') return c - '0' + 52;
	if(c == '-') return 62;
	if(c == '_') return 63;
	return -1;
}

long amora_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outcap)
{
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t n = 0;

	/* A single leftover character cannot encode a byte: not base64. */
	if(len % 4 == 1 || len > (size_t)LONG_MAX / 3 * 4) return -1;
	for(size_t i = 0; i < len; i++){
		int v = b64url_value((unsigned char)in[i]);
		if(v < 0) return -1; /* also refuses '=' padding, '+', '/' and whitespace */
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if(bits >= 8){
			bits -= 8;
			if(n >= outcap) return -1;
			out[n++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Leftover bits must be zero: one token, one encoding (no malleable variants). */
	if(acc != 0) return -1;
	return (long)n;
}

void amora_b64url_encode(const unsigned char *in, size_t len, char *out)
{
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	uint32_t acc = 0;
	unsigned bits = 0;
	size_t n = 0;

	for(size_t i = 0; i < len; i++){
		acc = (acc << 8) | in[i];
		bits += 8;
		while(bits >= 6){
			bits -= 6;
			out[n++] = alphabet[(acc >> bits) & 0x3f];
		}
	}
	if(bits > 0) out[n++] = alphabet[(acc << (6 - bits)) & 0x3f];
	out[n] = '\0';
}

/* ---- keys ----------------------------------------------------------------------- */

/* KID = base64url(first 16 bytes of SHA-256(DER SubjectPublicKeyInfo)). */
static int key_id(EVP_PKEY *pkey, char kid[AMORA_KID_LEN + 1])
{
	unsigned char *der = NULL;
	unsigned char digest[SHA256_DIGEST_LENGTH];
	int derlen = i2d_PUBKEY(pkey, &der);

	if(derlen <= 0) return -1;
	SHA256(der, (size_t)derlen, digest);
	OPENSSL_free(der);
	amora_b64url_encode(digest, 16, kid);
	return 0;
}

static bool is_p256(EVP_PKEY *pkey)
{
	char group[64];

	if(EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC) return false;
	if(EVP_PKEY_get_group_name(pkey, group, sizeof(group), NULL) != 1) return false;
	return OBJ_txt2nid(group) == NID_X9_62_prime256v1;
}

/* One key from one PEM block; only "PUBLIC KEY" blocks (SubjectPublicKeyInfo) are keys
 * here: a private key in the broker's file is a deployment mistake worth stopping for. */
static int add_key(struct amora_keyring *ring, const char *name, const unsigned char *der, long len,
		const char *what, char *err, size_t errlen)
{
	const unsigned char *p = der;
	EVP_PKEY *pkey;
	struct amora_key *key;

	if(strcmp(name, "PUBLIC KEY") != 0){
		snprintf(err, errlen, "%s: PEM block %zu is \"%s\", not \"PUBLIC KEY\": the broker needs only the public half (amora-authz broker-token-key public)", what, ring->count + 1, name);
		return -1;
	}
	if(ring->count == AMORA_MAX_KEYS){
		snprintf(err, errlen, "%s holds more than %d public keys: keep the current and the next key only", what, AMORA_MAX_KEYS);
		return -1;
	}
	pkey = d2i_PUBKEY(NULL, &p, len);
	if(pkey == NULL || p != der + len || !is_p256(pkey)){
		snprintf(err, errlen, "%s: key %zu is not an EC P-256 public key (export the broker-token key's public half)", what, ring->count + 1);
		EVP_PKEY_free(pkey);
		return -1;
	}
	key = &ring->keys[ring->count];
	if(key_id(pkey, key->kid) != 0){
		snprintf(err, errlen, "%s: key %zu cannot be encoded", what, ring->count + 1);
		EVP_PKEY_free(pkey);
		return -1;
	}
	key->pkey = pkey;
	ring->count++;
	return 0;
}

static int keyring_load_bio(struct amora_keyring *ring, BIO *bio, const char *what, char *err, size_t errlen)
{
	char *name = NULL, *header = NULL;
	unsigned char *data = NULL;
	long len = 0;

	ring->count = 0;
	ERR_clear_error();
	while(PEM_read_bio(bio, &name, &header, &data, &len) == 1){
		int rc = add_key(ring, name, data, len, what, err, errlen);
		OPENSSL_free(name);
		OPENSSL_free(header);
		OPENSSL_free(data);
		if(rc != 0) goto fail;
	}
	/* PEM_read_bio ends with "no start line" at the end of the file; any other error
	 * (a truncated block, bad base64) is a broken file. */
	if(ERR_GET_REASON(ERR_peek_last_error()) != PEM_R_NO_START_LINE){
		snprintf(err, errlen, "%s: PEM block %zu is damaged (truncated or bad base64)", what, ring->count + 1);
		goto fail;
	}
	if(ring->count == 0){
		snprintf(err, errlen, "%s holds no PEM public key (\"-----BEGIN PUBLIC KEY-----\"): write the public key(s) of the broker-token signing key there", what);
		goto fail;
	}
	ERR_clear_error();
	return 0;
fail:
	ERR_clear_error();
	amora_keyring_free(ring);
	return -1;
}

/* The key file is a trust anchor: whoever can write it can mint tokens. */
static int check_key_file(FILE *fp, const char *path, char *err, size_t errlen)
{
	struct stat st;

	if(fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)){
		snprintf(err, errlen, "public_keys file %s is not a regular file", path);
		return -1;
	}
	if(st.st_mode & (S_IWGRP | S_IWOTH)){
		snprintf(err, errlen, "public_keys file %s is writable by group or others (mode %03o): chmod 644 it (anyone who can write it can mint tokens)", path, (unsigned)(st.st_mode & 0777));
		return -1;
	}
	if(st.st_uid != 0 && st.st_uid != geteuid()){
		snprintf(err, errlen, "public_keys file %s is owned by uid %u: only root or the broker's user may own it (its owner can mint tokens)", path, (unsigned)st.st_uid);
		return -1;
	}
	return 0;
}

int amora_keyring_load_file(struct amora_keyring *ring, const char *path, char *err, size_t errlen)
{
	FILE *fp = fopen(path, "re");
	BIO *bio;
	int rc;

	if(fp == NULL){
		snprintf(err, errlen, "public_keys file %s cannot be read: check the path and that the broker's user can read it", path);
		return -1;
	}
	if(check_key_file(fp, path, err, errlen) != 0){
		fclose(fp);
		return -1;
	}
	bio = BIO_new_fp(fp, BIO_CLOSE);
	if(bio == NULL){
		fclose(fp);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	rc = keyring_load_bio(ring, bio, path, err, errlen);
	BIO_free(bio);
	return rc;
}

int amora_keyring_load_pem(struct amora_keyring *ring, const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio;
	int rc;

	if(len > INT_MAX) return -1;
	bio = BIO_new_mem_buf(pem, (int)len);
	if(bio == NULL){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	rc = keyring_load_bio(ring, bio, "PEM", err, errlen);
	BIO_free(bio);
	return rc;
}

void amora_keyring_free(struct amora_keyring *ring)
{
	for(size_t i = 0; i < ring->count; i++){
		EVP_PKEY_free(ring->keys[i].pkey);
		ring->keys[i].pkey = NULL;
	}
	ring->count = 0;
}

static EVP_PKEY *find_key(const struct amora_keyring *ring, const char *kid)
{
	for(size_t i = 0; i < ring->count; i++){
		if(strcmp(ring->keys[i].kid, kid) == 0) return ring->keys[i].pkey;
	}
	return NULL;
}

/* ES256: JWS carries r||s (32 bytes each); OpenSSL verifies a DER ECDSA-Sig-Value. */
static bool es256_verify(EVP_PKEY *pkey, const unsigned char *msg, size_t msglen, const unsigned char sig[64])
{
	ECDSA_SIG *esig = ECDSA_SIG_new();
	BIGNUM *r = BN_bin2bn(sig, 32, NULL);
	BIGNUM *s = BN_bin2bn(sig + 32, 32, NULL);
	unsigned char *der = NULL;
	int derlen;
	EVP_MD_CTX *ctx = NULL;
	bool ok = false;

	if(esig == NULL || r == NULL || s == NULL || ECDSA_SIG_set0(esig, r, s) != 1){
		BN_free(r);
		BN_free(s);
		goto done;
	}
	/* esig owns r and s from here */
	derlen = i2d_ECDSA_SIG(esig, &der);
	if(derlen <= 0) goto done;
	ctx = EVP_MD_CTX_new();
	if(ctx == NULL) goto done;
	if(EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pkey) != 1) goto done;
	ok = EVP_DigestVerify(ctx, der, (size_t)derlen, msg, msglen) == 1;
done:
	EVP_MD_CTX_free(ctx);
	OPENSSL_free(der);
	ECDSA_SIG_free(esig);
	ERR_clear_error();
	return ok;
}

/* ---- JSON helpers --------------------------------------------------------------- */

cJSON *amora_json_parse_exact(const char *text, size_t len)
{
	const char *end = NULL;
	cJSON *json;

	/* A NUL, raw or escaped, would cut a cJSON string short of the bytes that were sent. */
	if(len == 0 || memchr(text, '\0', len) != NULL || memmem(text, len, "\\u0000", 6) != NULL) return NULL;
	json = cJSON_ParseWithLengthOpts(text, len, &end, false);
	if(json == NULL) return NULL;
	/* cJSON stops after the first value: anything but whitespace after it is refused. */
	for(; end != NULL && end < text + len; end++){
		if(*end != ' ' && *end != '\t' && *end != '\n' && *end != '\r'){
			cJSON_Delete(json);
			return NULL;
		}
	}
	return json;
}

/* Decode one base64url part and parse it as a JSON object (NULL on any error). */
static cJSON *decode_json_part(const char *part, size_t len)
{
	unsigned char *buf = malloc(len / 4 * 3 + 3);
	long n;
	cJSON *json = NULL;

	if(buf == NULL) return NULL;
	n = amora_b64url_decode(part, len, buf, len / 4 * 3 + 2);
	if(n > 0){ /* NUL-terminated: a cJSON without the CVE-2023-53154 fix reads one byte past */
		buf[n] = '\0';
		json = amora_json_parse_exact((const char *)buf, (size_t)n);
	}
	free(buf);
	if(json != NULL && !cJSON_IsObject(json)){
		cJSON_Delete(json);
		json = NULL;
	}
	return json;
}

/* Refuse an object naming one of `names` twice: which one a reader uses is ambiguous. */
static bool has_duplicate(const cJSON *obj, const char *const *names, size_t count)
{
	unsigned seen = 0;

	for(const cJSON *item = obj->child; item != NULL; item = item->next){
		for(size_t i = 0; i < count; i++){
			if(item->string != NULL && strcmp(item->string, names[i]) == 0){
				if(seen & (1u << i)) return true;
				seen |= 1u << i;
			}
		}
	}
	return false;
}

static const char *get_string(const cJSON *obj, const char *name)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);
	return cJSON_IsString(item) ? item->valuestring : NULL;
}

/* An integral JSON number in [0, 2^53]: seconds since the epoch. */
static bool get_seconds(const cJSON *obj, const char *name, long long *out)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, name);

	if(!cJSON_IsNumber(item)) return false;
	if(!isfinite(item->valuedouble) || item->valuedouble < 0 || item->valuedouble > 9007199254740992.0) return false;
	if(floor(item->valuedouble) != item->valuedouble) return false;
	*out = (long long)item->valuedouble;
	return true;
}

/* ---- ACL ------------------------------------------------------------------------ */

/* An MQTT filter: '+' a whole level, '#' only as the whole last level. */
static bool valid_filter(const char *t, size_t len)
{
	for(size_t i = 0; i < len; i++){
		if(t[i] == '+' || t[i] == '#'){
			if(i > 0 && t[i - 1] != '/') return false;
			if(i + 1 < len && t[i + 1] != '/') return false;
			if(t[i] == '#' && i + 1 != len) return false;
		}
	}
	return true;
}

void amora_acl_free(struct amora_acl *acl)
{
	for(size_t i = 0; i < acl->count; i++) free(acl->rules[i].topic);
	free(acl->rules);
	acl->rules = NULL;
	acl->count = 0;
}

static const char *parse_rule(const cJSON *obj, struct amora_rule *rule)
{
	static const char *const names[] = {"permission", "action", "topic"};
	const char *permission, *action, *topic;
	size_t len;

	if(!cJSON_IsObject(obj)) return "acl rule is not an object";
	for(const cJSON *item = obj->child; item != NULL; item = item->next){
		/* qos/retain and anything else we cannot honour: fail closed, not silently wider. */
		if(item->string == NULL || (strcmp(item->string, "permission") && strcmp(item->string, "action") && strcmp(item->string, "topic"))){
			return "acl rule has an unsupported member";
		}
	}
	if(has_duplicate(obj, names, 3)) return "acl rule repeats a member";
	permission = get_string(obj, "permission");
	action = get_string(obj, "action");
	topic = get_string(obj, "topic");
	if(permission == NULL || action == NULL || topic == NULL) return "acl rule lacks permission, action or topic";
	if(strcmp(permission, "allow") == 0) rule->allow = true;
	else if(strcmp(permission, "deny") == 0) rule->allow = false;
	else return "acl rule permission is not allow/deny";
	if(strcmp(action, "publish") == 0) rule->actions = AMORA_ACTION_PUBLISH;
	else if(strcmp(action, "subscribe") == 0) rule->actions = AMORA_ACTION_SUBSCRIBE;
	else if(strcmp(action, "all") == 0) rule->actions = AMORA_ACTION_PUBLISH | AMORA_ACTION_SUBSCRIBE;
	else return "acl rule action is not publish/subscribe/all";
	len = strlen(topic);
	if(len == 0 || len > AMORA_TOPIC_MAX_BYTES || !valid_filter(topic, len)) return "acl rule topic is empty, too long or not a valid filter";
	rule->topic = strdup(topic);
	if(rule->topic == NULL) return "out of memory";
	return NULL;
}

static const char *parse_acl(const cJSON *array, struct amora_acl *acl)
{
	int n;
	size_t i = 0;
	const cJSON *item;

	if(!cJSON_IsArray(array)) return "acl claim missing or not an array";
	n = cJSON_GetArraySize(array);
	if(n < 0 || n > AMORA_ACL_MAX_RULES) return "acl claim has too many rules";
	acl->count = 0;
	acl->rules = NULL;
	if(n == 0) return NULL;
	acl->rules = calloc((size_t)n, sizeof(*acl->rules));
	if(acl->rules == NULL) return "out of memory";
	cJSON_ArrayForEach(item, array){
		const char *why = parse_rule(item, &acl->rules[i]);
		if(why != NULL){
			amora_acl_free(acl);
			return why;
		}
		acl->count = ++i;
	}
	return NULL;
}

bool amora_acl_allows(const struct amora_acl *acl, int access, const char *topic, amora_topic_match_fn match)
{
	unsigned need;
	bool wildcard_sub;

	if(access == AMORA_ACCESS_UNSUBSCRIBE) return true;
	if(topic == NULL || topic[0] == '\0' || topic[0] == '$') return false;
	switch(access){
		case AMORA_ACCESS_WRITE:
			need = AMORA_ACTION_PUBLISH;
			break;
		case AMORA_ACCESS_READ:
		case AMORA_ACCESS_SUBSCRIBE:
			need = AMORA_ACTION_SUBSCRIBE;
			break;
		default:
			return false;
	}
	/* A wildcard subscription is only allowed as exactly a granted filter: topic
	 * matching would read "+" as a literal level and widen nothing, but it would also
	 * let a client subscribe to a filter broader than any rule. */
	wildcard_sub = access == AMORA_ACCESS_SUBSCRIBE && strpbrk(topic, "+#") != NULL;
	for(size_t i = 0; i < acl->count; i++){
		const struct amora_rule *rule = &acl->rules[i];
		bool hit = false;

		if(!(rule->actions & need)) continue;
		if(wildcard_sub){
			hit = strcmp(rule->topic, topic) == 0;
		}else if(match(rule->topic, topic, &hit) != 0){
			hit = false;
		}
		if(hit) return rule->allow;
	}
	return false;
}

/* ---- the token ------------------------------------------------------------------ */

static const char *check_header(const cJSON *header, const struct amora_keyring *keys, EVP_PKEY **pkey)
{
	static const char *const names[] = {"alg", "typ", "kid", "crit"};
	const char *alg = get_string(header, "alg");
	const char *kid = get_string(header, "kid");
	const cJSON *typ = cJSON_GetObjectItemCaseSensitive(header, "typ");

	if(has_duplicate(header, names, 4)) return "header repeats a member";
	/* Only ES256: never "none", never HMAC (a public key used as an HMAC secret). */
	if(alg == NULL || strcmp(alg, "ES256") != 0) return "alg is not ES256";
	if(typ != NULL && (!cJSON_IsString(typ) || strcmp(typ->valuestring, "JWT") != 0)) return "typ is not JWT";
	/* crit names extensions we would have to understand: we understand none. */
	if(cJSON_GetObjectItemCaseSensitive(header, "crit") != NULL) return "crit header present";
	/* jku/jwk/x5u/x5c are ignored on purpose: keys come from the broker's file only. */
	if(kid == NULL || strlen(kid) != AMORA_KID_LEN) return "unknown kid";
	*pkey = find_key(keys, kid);
	if(*pkey == NULL) return "unknown kid";
	return NULL;
}

static const char *check_claims(const struct amora_verifier *v, const cJSON *claims,
		const char *username, const char *clientid, time_t now, long long *exp_out)
{
	static const char *const names[] = {"iss", "aud", "sub", "username", "clientid", "iat", "exp", "acl"};
	const char *iss = get_string(claims, "iss");
	const char *aud = get_string(claims, "aud");
	const char *sub = get_string(claims, "sub");
	const char *c_username = get_string(claims, "username");
	const char *c_clientid = get_string(claims, "clientid");
	long long iat, exp;

	if(has_duplicate(claims, names, 8)) return "claims repeat a member";
	if(iss == NULL || strcmp(iss, v->issuer) != 0) return "wrong iss";
	if(aud == NULL || strcmp(aud, v->audience) != 0) return "wrong aud";
	if(sub == NULL || sub[0] == '\0') return "sub missing";
	if(c_username == NULL || username == NULL || strcmp(c_username, username) != 0) return "username does not match the token";
	if(c_clientid == NULL || c_clientid[0] == '\0' || clientid == NULL || strcmp(c_clientid, clientid) != 0) return "client id does not match the token";
	if(!get_seconds(claims, "iat", &iat) || !get_seconds(claims, "exp", &exp)) return "iat/exp missing or not integer seconds";
	if(exp <= (long long)now) return "expired";
	if(iat > (long long)now + AMORA_IAT_LEEWAY_S) return "issued in the future";
	*exp_out = exp;
	return NULL;
}

int amora_token_verify(const struct amora_verifier *v, const char *token, size_t len,
		const char *username, const char *clientid, time_t now,
		struct amora_acl *acl, long long *exp, const char **reason)
{
	const char *dot1, *dot2;
	size_t hlen, plen, slen;
	unsigned char sig[64];
	cJSON *header = NULL, *claims = NULL;
	EVP_PKEY *pkey = NULL;
	const char *why;
	long long exp_value = 0;

	acl->rules = NULL;
	acl->count = 0;
	if(token == NULL || len == 0){
		*reason = "no password";
		return -1;
	}
	if(len > AMORA_TOKEN_MAX_BYTES){
		*reason = "token too large";
		return -1;
	}
	dot1 = memchr(token, '.', len);
	dot2 = dot1 == NULL ? NULL : memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
	if(dot1 == NULL || dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL){
		*reason = "not a compact JWS";
		return -1;
	}
	hlen = (size_t)(dot1 - token);
	plen = (size_t)(dot2 - dot1 - 1);
	slen = len - (size_t)(dot2 + 1 - token);
	if(hlen == 0 || plen == 0 || slen == 0){
		*reason = "not a compact JWS";
		return -1;
	}
	header = decode_json_part(token, hlen);
	if(header == NULL){
		*reason = "header is not base64url JSON";
		return -1;
	}
	why = check_header(header, v->keys, &pkey);
	cJSON_Delete(header);
	if(why != NULL){
		*reason = why;
		return -1;
	}
	if(amora_b64url_decode(dot2 + 1, slen, sig, sizeof(sig)) != 64){
		*reason = "signature is not 64 bytes of base64url";
		return -1;
	}
	/* The signing input is the token's own bytes up to the second dot. */
	if(!es256_verify(pkey, (const unsigned char *)token, (size_t)(dot2 - token), sig)){
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
		*reason = "bad signature";
		return -1;
#endif
		/* The second fuzzer (make fuzz: fuzz_token_nosig) goes on, so mutated claims reach
		 * the code after this check; plugin.c refuses to compile in this mode. */
	}
	claims = decode_json_part(dot1 + 1, plen);
	if(claims == NULL){
		*reason = "claims are not base64url JSON";
		return -1;
	}
	why = check_claims(v, claims, username, clientid, now, &exp_value);
	if(why == NULL && v->revoked != NULL && v->revoked(v->revoked_ctx, username, now)) why = "revoked";
	if(why == NULL) why = parse_acl(cJSON_GetObjectItemCaseSensitive(claims, "acl"), acl);
	cJSON_Delete(claims);
	if(why != NULL){
		*reason = why;
		return -1;
	}
	if(exp != NULL) *exp = exp_value;
	*reason = NULL;
	return 0;
}
