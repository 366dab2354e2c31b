/*
 * amora_auth: mosquitto 2.0 plugin (API version 5) for stateless session credentials.
 *
 * Usernames that start with the configured prefix ("sess.") are ours: the MQTT password
 * must be a broker token (token.c) and the token's ACL is enforced for the connection.
 * For those usernames this plugin is authoritative: it never answers DEFER, so such a
 * name can never fall through to dynamic security. Every other username is DEFERred to
 * the next plugin (dynsec), unchanged. `$CONTROL/amora-auth/v1` takes revocations
 * (control.c). See ../README.md for the options and the threat notes.
 */
#define _GNU_SOURCE /* tdestroy */
#include "plugin.h"

#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#error "the fuzzing build skips the signature check: never build the plugin with it"
#endif

#include <ctype.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <openssl/evp.h>

/* Expired revocations and tokens of departed clients are dropped this often (a build
 * for checks may set it lower). */
#ifndef PRUNE_INTERVAL_S
#define PRUNE_INTERVAL_S 60
#endif

/* What a connected (or offline, persistent) session may do. */
struct client_entry {
	char *clientid;
	const struct mosquitto *client; /* the connection that presented the token */
	struct amora_acl acl;
	long long exp;
	unsigned char password_hash[32]; /* SHA-256 of the token verified for `client` */
	bool offline;
};

static struct amora_plugin g_plugin;

static int by_clientid(const void *a, const void *b)
{
	return strcmp(((const struct client_entry *)a)->clientid, ((const struct client_entry *)b)->clientid);
}

static void free_client(void *p)
{
	struct client_entry *e = p;
	amora_acl_free(&e->acl);
	free(e->clientid);
	free(e);
}

/* Usernames are client input: log at most 128 printable bytes of them. */
void amora_printable(const char *in, char *out, size_t outlen)
{
	size_t n = 0;

	for(; in != NULL && *in != '\0' && n + 1 < outlen && n < 128; in++){
		out[n++] = isprint((unsigned char)*in) ? *in : '?';
	}
	out[n] = '\0';
}

static bool is_revoked(void *ctx, const char *username, time_t now)
{
	return amora_revocations_active(ctx, username, now);
}

static struct client_entry *find_client(const char *clientid)
{
	struct client_entry key = {.clientid = (char *)clientid};
	struct client_entry **found;

	if(clientid == NULL) return NULL;
	found = tfind(&key, &g_plugin.clients, by_clientid);
	return found == NULL ? NULL : *found;
}

/* SHA-256 of the password: a reload pass compares it instead of verifying again. */
static int hash_password(const char *password, size_t len, unsigned char out[32])
{
	unsigned int n = 0;

	return EVP_Digest(password == NULL ? "" : password, len, out, &n, EVP_sha256(), NULL) == 1 && n == 32 ? 0 : -1;
}

/* A reload (SIGHUP) makes mosquitto run basic auth again for every context, live and
 * offline persistent ones, with the password given at CONNECT. A context whose entry
 * holds that very token was verified at CONNECT: answer from the entry, without a
 * signature check and without replacing it (its `offline` flag stays, so a departed
 * session is still pruned). Only a revocation refuses it; `exp` is not re-checked on a
 * live connection (the SDK refreshes its token without reconnecting). Returns
 * MOSQ_ERR_PLUGIN_DEFER when the entry does not match (then the full check runs). */
static int reauth_from_entry(struct amora_plugin *p, const struct mosquitto_evt_basic_auth *ed, const char *clientid,
		const unsigned char hash[32], const char *who)
{
	struct client_entry *e = find_client(clientid);

	if(e == NULL || e->client != ed->client || memcmp(e->password_hash, hash, 32) != 0) return MOSQ_ERR_PLUGIN_DEFER;
	if(amora_revocations_active(&p->revocations, ed->username, time(NULL))){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: refused %s: revoked (checked again on reload)", who);
		return MOSQ_ERR_AUTH;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct amora_plugin *p = userdata;
	const char *clientid;
	const char *reason = NULL;
	char who[130];
	struct amora_verifier v;
	struct client_entry *e, **slot;
	size_t len;
	unsigned char hash[32];
	int rc;

	(void)event;
	if(!amora_is_session(p, ed->username)) return MOSQ_ERR_PLUGIN_DEFER;
	amora_printable(ed->username, who, sizeof(who));
	clientid = mosquitto_client_id(ed->client);
	/* strnlen: a password longer than the limit is refused without reading all of it. */
	len = ed->password == NULL ? 0 : strnlen(ed->password, AMORA_TOKEN_MAX_BYTES + 1);
	if(hash_password(ed->password, len, hash) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: refused %s: out of memory", who);
		return MOSQ_ERR_AUTH;
	}
	/* Only inside a reload pass: at a new CONNECT a freed context's address may come
	 * back for the same client id, and a new CONNECT must have its `exp` checked. */
	if(p->reloading && (rc = reauth_from_entry(p, ed, clientid, hash, who)) != MOSQ_ERR_PLUGIN_DEFER) return rc;
	if(!p->revocations.synced){
		/* Fail closed: without a confirmed deny list a revoked token would get in. */
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: refused %s: deny list not confirmed by the authz service yet (new or lost revocations file)", who);
		return MOSQ_ERR_AUTH;
	}
	v = (struct amora_verifier){
		.keys = &p->keys, .issuer = p->issuer, .audience = p->audience,
		.revoked = is_revoked, .revoked_ctx = &p->revocations,
	};
	e = calloc(1, sizeof(*e));
	if(e == NULL || (e->clientid = strdup(clientid == NULL ? "" : clientid)) == NULL){
		free(e);
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: refused %s: out of memory", who);
		return MOSQ_ERR_AUTH;
	}
	if(amora_token_verify(&v, ed->password, len, ed->username, clientid, time(NULL), &e->acl, &e->exp, &reason) != 0){
		free_client(e);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: refused %s: %s", who, reason);
		return MOSQ_ERR_AUTH;
	}
	if(p->max_lifetime_s > 0 && e->exp - (long long)time(NULL) > p->max_lifetime_s){
		/* Defence in depth: authz never signs one (exp = the session's expiry). */
		free_client(e);
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: refused %s: expires later than plugin_opt_max_lifetime", who);
		return MOSQ_ERR_AUTH;
	}
	e->client = ed->client;
	memcpy(e->password_hash, hash, sizeof(hash));
	slot = tsearch(e, &p->clients, by_clientid);
	if(slot == NULL){
		free_client(e);
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: refused %s: out of memory", who);
		return MOSQ_ERR_AUTH;
	}
	if(*slot != e){
		/* Same client id again (a reconnect or a takeover): the new token replaces the
		 * old ACL; the old connection's disconnect then finds a different client. */
		struct client_entry *old = *slot;
		*slot = e;
		free_client(old);
	}else{
		p->client_count++;
	}
	return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	struct amora_plugin *p = userdata;
	const char *username = mosquitto_client_username(ed->client);
	struct client_entry *e;

	(void)event;
	if(!amora_is_session(p, username)) return MOSQ_ERR_PLUGIN_DEFER;
	/* Defence in depth: a revoked session is kicked at once, but nothing reaches or
	 * leaves it in between either. */
	if(amora_revocations_active(&p->revocations, username, time(NULL))) return MOSQ_ERR_ACL_DENIED;
	e = find_client(mosquitto_client_id(ed->client));
	if(e == NULL || e->client != ed->client) return MOSQ_ERR_ACL_DENIED;
	return amora_acl_allows(&e->acl, ed->access, ed->topic, mosquitto_topic_matches_sub)
		? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

/* The connection closed. Its entry stays (marked offline) while the token is valid: a
 * persistent session still gets its messages queued (each is ACL-checked for it), and
 * its Last Will, published after this event, is checked against the same rules. */
static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct client_entry *e;

	(void)event;
	(void)userdata;
	e = find_client(mosquitto_client_id(ed->client));
	if(e != NULL && e->client == ed->client) e->offline = true;
	return MOSQ_ERR_SUCCESS;
}

struct prune_walk {
	time_t now;
	struct client_entry **found;
	size_t count;
};

static void collect_stale(const void *node, VISIT which, void *ctx)
{
	struct prune_walk *w = ctx;
	struct client_entry *e = *(struct client_entry *const *)node;

	if((which == postorder || which == leaf) && e->offline && e->exp <= (long long)w->now){
		w->found[w->count++] = e;
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	struct amora_plugin *p = userdata;
	time_t now = time(NULL);
	struct prune_walk w = {.now = now, .count = 0};

	(void)event;
	(void)event_data;
	/* mosquitto ticks after the reload's re-authentication pass, in the same loop
	 * iteration, before it reads any new packet: the pass is over. */
	p->reloading = false;
	amora_control_flush(p, false, true);
	if(now < p->next_prune) return MOSQ_ERR_SUCCESS;
	p->next_prune = now + PRUNE_INTERVAL_S;
	amora_revocations_prune(&p->revocations, now);
	/* Clients gone whose token has expired: one walk over every entry a minute (about a
	 * millisecond per 10,000), collected first because the tree may not change mid-walk.
	 * Out of memory: they stay until the next pass. */
	if(p->client_count == 0) return MOSQ_ERR_SUCCESS;
	w.found = calloc(p->client_count, sizeof(*w.found));
	if(w.found == NULL) return MOSQ_ERR_SUCCESS;
	twalk_r(p->clients, collect_stale, &w);
	for(size_t i = 0; i < w.count; i++){
		tdelete(w.found[i], &p->clients, by_clientid);
		free_client(w.found[i]);
	}
	p->client_count -= w.count;
	free(w.found);
	if(w.count > 0) mosquitto_log_printf(MOSQ_LOG_INFO, "amora_auth: dropped %zu departed session(s) whose token expired", w.count);
	return MOSQ_ERR_SUCCESS;
}

/* SIGHUP: read the public keys again (rotation without a restart). A file that does not
 * load keeps the keys in use: a typo must not lock every session out. Always DEFER, so
 * plugins after this one get the event too. mosquitto sends this event just before it
 * runs basic auth again for every context (mosquitto_security_apply): `reloading` lets
 * on_basic_auth answer those from the entries (reauth_from_entry). */
static int on_reload(int event, void *event_data, void *userdata)
{
	struct amora_plugin *p = userdata;
	struct amora_keyring fresh;
	char err[512];

	(void)event;
	(void)event_data;
	p->reloading = true;
	if(amora_keyring_load_file(&fresh, p->public_keys, err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: reload: keeping the %zu key(s) in use: %s", p->keys.count, err);
		return MOSQ_ERR_PLUGIN_DEFER;
	}
	amora_keyring_free(&p->keys);
	p->keys = fresh;
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: reload: %zu public key(s) from %s", p->keys.count, p->public_keys);
	return MOSQ_ERR_PLUGIN_DEFER;
}

/* ---- options and lifecycle ------------------------------------------------------ */

static int set_option(struct amora_plugin *p, const char *key, const char *value)
{
	char **slot = NULL;

	if(strcmp(key, "public_keys") == 0) slot = &p->public_keys;
	else if(strcmp(key, "issuer") == 0) slot = &p->issuer;
	else if(strcmp(key, "audience") == 0) slot = &p->audience;
	else if(strcmp(key, "revocations") == 0) slot = &p->revocations_file;
	else if(strcmp(key, "username_prefix") == 0) slot = &p->prefix;
	else if(strcmp(key, "max_lifetime") == 0) slot = &p->max_lifetime;
	if(slot == NULL){
		/* A misspelt option (say "audiance") must not silently fall back to a default. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: unknown option plugin_opt_%s (known: public_keys, issuer, audience, revocations, username_prefix, max_lifetime)", key);
		return -1;
	}
	free(*slot);
	*slot = strdup(value == NULL ? "" : value);
	return *slot == NULL ? -1 : 0;
}

static void free_plugin(struct amora_plugin *p)
{
	amora_keyring_free(&p->keys);
	amora_revocations_free(&p->revocations);
	tdestroy(p->clients, free_client);
	free(p->public_keys);
	free(p->issuer);
	free(p->audience);
	free(p->revocations_file);
	free(p->prefix);
	free(p->max_lifetime);
	memset(p, 0, sizeof(*p));
}

static int configure(struct amora_plugin *p, struct mosquitto_opt *opts, int count)
{
	char err[512];

	for(int i = 0; i < count; i++){
		if(set_option(p, opts[i].key, opts[i].value) != 0) return -1;
	}
	if(p->audience == NULL && (p->audience = strdup("amora-broker")) == NULL) return -1;
	if(p->prefix == NULL && (p->prefix = strdup("sess.")) == NULL) return -1;
	if(p->issuer == NULL || p->issuer[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: plugin_opt_issuer is missing: set it to the authz service's token_issuer (amora-authz)");
		return -1;
	}
	if(p->audience[0] == '\0' || p->prefix[0] == '\0'){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: plugin_opt_audience and plugin_opt_username_prefix must not be empty");
		return -1;
	}
	p->prefix_len = strlen(p->prefix);
	if(p->max_lifetime != NULL){
		char *end = NULL;
		p->max_lifetime_s = strtoll(p->max_lifetime, &end, 10);
		if(end == p->max_lifetime || *end != '\0' || p->max_lifetime_s <= 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: plugin_opt_max_lifetime must be a number of seconds above 0 (the longest session the authz service makes: session_ttl_s)");
			return -1;
		}
	}
	if(p->public_keys == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: plugin_opt_public_keys is missing: name the PEM file with the broker-token public key(s) (amora-authz broker-token-key public)");
		return -1;
	}
	if(amora_keyring_load_file(&p->keys, p->public_keys, err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: %s", err);
		return -1;
	}
	if(p->revocations_file == NULL){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: plugin_opt_revocations is missing: name a file in a directory only the broker's user can write (the deny list survives restarts there)");
		return -1;
	}
	if(amora_revocations_load(&p->revocations, p->revocations_file, time(NULL), err, sizeof(err)) != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: %s", err);
		return -1;
	}
	return 0;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *opts, int opt_count)
{
	struct amora_plugin *p = &g_plugin;

	memset(p, 0, sizeof(*p));
	p->id = identifier;
	if(configure(p, opts, opt_count) != 0){
		free_plugin(p);
		return MOSQ_ERR_UNKNOWN;
	}
	if(mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, p)
			|| mosquitto_callback_register(identifier, MOSQ_EVT_CONTROL, amora_on_control, AMORA_CONTROL_TOPIC, p)){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: cannot register callbacks (is it loaded twice?)");
		free_plugin(p);
		return MOSQ_ERR_UNKNOWN;
	}
	*userdata = p;
	mosquitto_log_printf(MOSQ_LOG_INFO, "amora_auth: %zu public key(s) from %s, issuer %s, audience %s, %zu revocation(s) from %s, usernames %s*",
			p->keys.count, p->public_keys, p->issuer, p->audience, p->revocations.count, p->revocations_file, p->prefix);
	if(!p->revocations.synced){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "amora_auth: revocations file %s %s: session logins (%s*) are refused until the authz service confirms the deny list (it does on connecting to this broker)",
				p->revocations_file, p->revocations.missing ? "is missing (first start, lost volume or a restore without it)" : "was never confirmed by the authz service", p->prefix);
	}
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *opts, int opt_count)
{
	struct amora_plugin *p = userdata;

	(void)opts;
	(void)opt_count;
	if(p == NULL) return MOSQ_ERR_SUCCESS;
	mosquitto_callback_unregister(p->id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
	mosquitto_callback_unregister(p->id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
	mosquitto_callback_unregister(p->id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
	mosquitto_callback_unregister(p->id, MOSQ_EVT_TICK, on_tick, NULL);
	mosquitto_callback_unregister(p->id, MOSQ_EVT_RELOAD, on_reload, NULL);
	mosquitto_callback_unregister(p->id, MOSQ_EVT_CONTROL, amora_on_control, AMORA_CONTROL_TOPIC);
	amora_control_flush(p, true, false); /* revocations applied but not saved yet */
	free_plugin(p);
	return MOSQ_ERR_SUCCESS;
}
