/*
 * How long the plugin's whole token check takes, without the broker or TLS around it:
 * amora_token_verify (split, base64url, header, kid, ES256, claims, deny-list hook, ACL of
 * one device) on a token like the authz service issues, in a loop on one core.
 *
 *   make bench && build/bench_verify [iterations]
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "token.h"

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 20000;
	EVP_PKEY *key = EVP_EC_gen("P-256");
	BIO *pem = BIO_new(BIO_s_mem());
	char *pem_data, err[256], header_b64[256], claims_b64[2048], sig_b64[128], token[4096], claims[1536];
	long pem_len;
	struct amora_keyring ring;
	time_t now = time(NULL);
	unsigned char der_sig[128], raw_sig[64];
	size_t der_len = sizeof(der_sig);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	ECDSA_SIG *esig;
	const unsigned char *p;
	char header[128];

	if(key == NULL || pem == NULL || md == NULL || !PEM_write_bio_PUBKEY(pem, key)) return 1;
	pem_len = BIO_get_mem_data(pem, &pem_data);
	if(amora_keyring_load_pem(&ring, pem_data, (size_t)pem_len, err, sizeof(err)) != 0){
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	snprintf(header, sizeof(header), "{\"alg\":\"ES256\",\"typ\":\"JWT\",\"kid\":\"%s\"}", ring.keys[0].kid);
	snprintf(claims, sizeof(claims),
			"{\"iss\":\"amora-authz\",\"aud\":\"amora-broker\",\"sub\":\"user-1\",\"username\":\"sess.bench\","
			"\"clientid\":\"bench-client\",\"iat\":%lld,\"exp\":%lld,\"acl\":["
			"{\"permission\":\"allow\",\"action\":\"subscribe\",\"topic\":\"amora/devices/d1/state\"},"
			"{\"permission\":\"allow\",\"action\":\"subscribe\",\"topic\":\"amora/devices/d1/connection\"},"
			"{\"permission\":\"allow\",\"action\":\"subscribe\",\"topic\":\"amora/devices/d1/responses/bench-client\"},"
			"{\"permission\":\"allow\",\"action\":\"publish\",\"topic\":\"amora/devices/d1/commands\"}]}",
			(long long)now, (long long)now + 3600);
	amora_b64url_encode((const unsigned char *)header, strlen(header), header_b64);
	amora_b64url_encode((const unsigned char *)claims, strlen(claims), claims_b64);
	snprintf(token, sizeof(token), "%s.%s", header_b64, claims_b64);
	if(EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1
			|| EVP_DigestSign(md, der_sig, &der_len, (const unsigned char *)token, strlen(token)) != 1) return 1;
	p = der_sig;
	esig = d2i_ECDSA_SIG(NULL, &p, (long)der_len);
	if(esig == NULL) return 1;
	BN_bn2binpad(ECDSA_SIG_get0_r(esig), raw_sig, 32);
	BN_bn2binpad(ECDSA_SIG_get0_s(esig), raw_sig + 32, 32);
	amora_b64url_encode(raw_sig, 64, sig_b64);
	strcat(token, ".");
	strcat(token, sig_b64);

	struct amora_verifier v = {.keys = &ring, .issuer = "amora-authz", .audience = "amora-broker"};
	double start = now_s();
	for(long i = 0; i < iterations; i++){
		struct amora_acl acl;
		const char *reason;
		if(amora_token_verify(&v, token, strlen(token), "sess.bench", "bench-client", now, &acl, NULL, &reason) != 0){
			fprintf(stderr, "refused: %s\n", reason);
			return 1;
		}
		amora_acl_free(&acl);
	}
	double elapsed = now_s() - start;
	printf("{\"token_bytes\": %zu, \"iterations\": %ld, \"us_per_verify\": %.1f, \"verifies_per_s\": %.0f}\n",
			strlen(token), iterations, elapsed / (double)iterations * 1e6, (double)iterations / elapsed);
	ECDSA_SIG_free(esig);
	EVP_MD_CTX_free(md);
	BIO_free(pem);
	EVP_PKEY_free(key);
	amora_keyring_free(&ring);
	return 0;
}
