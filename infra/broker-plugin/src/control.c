/*
 * `$CONTROL/amora-auth/v1`: revokeSessions, listRevocations and synced (TOKEN_SPEC "Revocation").
 *
 * Who may publish here is decided by the ACL check that mosquitto runs before this
 * handler (dynsec grants the authz admin account publishClientSend on
 * `$CONTROL/amora-auth/#`; session clients are refused every `$` topic by this plugin).
 * Each command is validated completely before anything of it is applied, so a bad
 * field costs that command alone, and the answer names what was wrong.
 *
 * Group commit: a revocation refuses and kicks at once, but its answer waits until the deny
 * list is saved (a full rewrite + fsync, O(entries) on the broker's only thread). A save
 * runs at once when the last one is long enough ago, else on the tick when it is due (ten
 * times the last save's duration later, at least 100 ms): a flood of revocations then
 * costs at most about a tenth of the thread, and every answer still follows its save.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

#include "plugin.h"

#define MAX_SESSIONS_PER_COMMAND 1000
#define MAX_USERNAME_BYTES 65535
#define MIN_SAVE_INTERVAL_MS 100
#define SAVE_COST_FACTOR 10

/* An answer whose revokeSessions wait for the next save. */
struct amora_reply {
	char *clientid;
	cJSON *tree;
	struct amora_reply *next;
};

static long long monotonic_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Append {"command", "correlationData", "error"} to `responses`; returns the object. */
static cJSON *reply(cJSON *responses, const char *command, const char *correlation, const char *error)
{
	cJSON *r = cJSON_CreateObject();

	if(r == NULL) return NULL;
	if(cJSON_AddStringToObject(r, "command", command) == NULL
			|| (correlation != NULL && cJSON_AddStringToObject(r, "correlationData", correlation) == NULL)
			|| (error != NULL && cJSON_AddStringToObject(r, "error", error) == NULL)
			|| !cJSON_AddItemToArray(responses, r)){
		cJSON_Delete(r);
		return NULL;
	}
	return r;
}

static bool integer_seconds(const cJSON *item, long long *out)
{
	if(!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > 9007199254740992.0
			|| (double)(long long)item->valuedouble != item->valuedouble){
		return false;
	}
	*out = (long long)item->valuedouble;
	return true;
}

/* Check every entry; NULL when all are well-formed, else the reason. */
static const char *validate_sessions(const struct amora_plugin *p, const cJSON *sessions, char *buf, size_t buflen)
{
	const cJSON *item;
	int n = 0;

	if(!cJSON_IsArray(sessions)) return "sessions must be an array of {username, until}";
	cJSON_ArrayForEach(item, sessions){
		const cJSON *username = cJSON_GetObjectItemCaseSensitive(item, "username");
		const cJSON *until = cJSON_GetObjectItemCaseSensitive(item, "until");
		long long ignored;

		if(++n > MAX_SESSIONS_PER_COMMAND){
			snprintf(buf, buflen, "more than %d sessions in one command: split it", MAX_SESSIONS_PER_COMMAND);
			return buf;
		}
		if(!cJSON_IsObject(item) || !cJSON_IsString(username) || !integer_seconds(until, &ignored)){
			snprintf(buf, buflen, "sessions[%d] must be {\"username\": string, \"until\": integer seconds}", n - 1);
			return buf;
		}
		if(!amora_is_session(p, username->valuestring) || strlen(username->valuestring) > MAX_USERNAME_BYTES){
			snprintf(buf, buflen, "sessions[%d].username does not start with %s", n - 1, p->prefix);
			return buf;
		}
	}
	if(n == 0) return "sessions is empty";
	return NULL;
}

static void revoke_sessions(struct amora_plugin *p, const cJSON *cmd, cJSON *responses, const char *correlation)
{
	const cJSON *sessions = cJSON_GetObjectItemCaseSensitive(cmd, "sessions");
	const cJSON *item;
	char buf[600];
	const char *why = validate_sessions(p, sessions, buf, sizeof(buf));
	time_t now = time(NULL);
	bool nomem = false;

	if(why != NULL){
		reply(responses, "revokeSessions", correlation, why);
		return;
	}
	cJSON_ArrayForEach(item, sessions){
		const char *username = cJSON_GetObjectItemCaseSensitive(item, "username")->valuestring;
		long long until = 0;

		integer_seconds(cJSON_GetObjectItemCaseSensitive(item, "until"), &until);
		/* An `until` already past (an expired session) lists nothing: its token is
		 * refused as expired anyway. The live connection is kicked either way. */
		if(until > (long long)now && amora_revocations_add(&p->revocations, username, until) != 0) nomem = true;
		mosquitto_kick_client_by_username(username, false);
	}
	p->dirty = true;
	if(nomem){
		reply(responses, "revokeSessions", correlation, "out of memory: some sessions were kicked but not listed; send the command again");
		return;
	}
	/* Persisted before the answer (an acknowledged revocation survives a restart): the
	 * answer is sent by amora_control_flush once the list is saved. */
	p->message_awaits = true;
	p->unsaved_sessions += (size_t)cJSON_GetArraySize(sessions);
	p->unsaved_commands++;
	reply(responses, "revokeSessions", correlation, NULL);
}

static void publish_tree(const char *clientid, const cJSON *tree)
{
	char *text = cJSON_PrintUnformatted(tree);

	if(text == NULL) return;
	/* Only to the connection that asked: other subscribers learn nothing of it. */
	mosquitto_broker_publish_copy(clientid, AMORA_RESPONSE_TOPIC, (int)strlen(text), text, 0, false, NULL);
	free(text);
}

/* The save failed: every revokeSessions answer of `tree` that waited for it says so. */
static void fail_waiting(cJSON *tree, const char *why)
{
	cJSON *r;

	cJSON_ArrayForEach(r, cJSON_GetObjectItemCaseSensitive(tree, "responses")){
		const cJSON *command = cJSON_GetObjectItemCaseSensitive(r, "command");
		if(cJSON_IsString(command) && strcmp(command->valuestring, "revokeSessions") == 0
				&& !cJSON_HasObjectItem(r, "error")){
			cJSON_AddStringToObject(r, "error", why);
		}
	}
}

void amora_control_flush(struct amora_plugin *p, bool force, bool publish)
{
	char err[512], why[600];
	long long start = monotonic_ms(), cost;
	struct amora_reply *r, *next;
	int rc;

	if(!p->dirty || (!force && start < p->next_save_ms)) return;
	rc = amora_revocations_save(&p->revocations, time(NULL), err, sizeof(err));
	cost = monotonic_ms() - start;
	p->next_save_ms = start + cost + (cost * SAVE_COST_FACTOR > MIN_SAVE_INTERVAL_MS ? cost * SAVE_COST_FACTOR : MIN_SAVE_INTERVAL_MS);
	p->dirty = false;
	if(rc != 0){
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: revocations not persisted: %s", err);
		snprintf(why, sizeof(why), "applied but not persisted (%s): send the command again", err);
	}else if(p->unsaved_commands > 0){
		mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: revoked %zu session(s) in %zu command(s), %zu listed (deny list saved in %lld ms)",
				p->unsaved_sessions, p->unsaved_commands, p->revocations.count, cost);
	}
	p->unsaved_sessions = p->unsaved_commands = 0;
	for(r = p->replies; r != NULL; r = next){
		next = r->next;
		if(rc != 0) fail_waiting(r->tree, why);
		if(publish) publish_tree(r->clientid, r->tree);
		cJSON_Delete(r->tree);
		free(r->clientid);
		free(r);
	}
	p->replies = NULL;
}

/* Queue `tree` behind the next save; false when out of memory. */
static bool wait_for_save(struct amora_plugin *p, const char *clientid, cJSON *tree)
{
	struct amora_reply *r = calloc(1, sizeof(*r)), **tail = &p->replies;

	if(r == NULL || (r->clientid = strdup(clientid == NULL ? "" : clientid)) == NULL){
		free(r);
		return false;
	}
	r->tree = tree;
	while(*tail != NULL) tail = &(*tail)->next;
	*tail = r;
	return true;
}

static void list_revocations(struct amora_plugin *p, cJSON *responses, const char *correlation)
{
	time_t now = time(NULL);
	cJSON *r, *sessions;

	amora_revocations_prune(&p->revocations, now);
	sessions = amora_revocations_to_json(&p->revocations, now);
	r = sessions == NULL ? NULL : reply(responses, "listRevocations", correlation, NULL);
	if(r == NULL || cJSON_AddNumberToObject(r, "count", cJSON_GetArraySize(sessions)) == NULL){
		cJSON_Delete(sessions);
		if(r == NULL) reply(responses, "listRevocations", correlation, "out of memory");
		else cJSON_AddStringToObject(r, "error", "out of memory");
		return;
	}
	if(!cJSON_AddItemToObject(r, "sessions", sessions)){
		cJSON_Delete(sessions);
		cJSON_AddStringToObject(r, "error", "out of memory");
	}
}

/* The authz service has compared the deny list with its database and sent what was
 * missing: session logins are allowed from now on (and after a restart from this file). */
static void confirm_synced(struct amora_plugin *p, cJSON *responses, const char *correlation)
{
	struct amora_revocations *r = &p->revocations;
	char buf[600], err[512];
	bool was = r->synced;

	r->synced = true;
	if(!r->synced_on_disk && amora_revocations_save(r, time(NULL), err, sizeof(err)) != 0){
		/* Open in memory (the list is complete); the marker is written with the next save. */
		mosquitto_log_printf(MOSQ_LOG_ERR, "amora_auth: deny list confirmation not persisted: %s", err);
		snprintf(buf, sizeof(buf), "applied but not persisted (%s): send the command again", err);
		reply(responses, "synced", correlation, buf);
		return;
	}
	if(!was) mosquitto_log_printf(MOSQ_LOG_NOTICE, "amora_auth: deny list confirmed by the authz service (%zu revocation(s)): session logins allowed", r->count);
	reply(responses, "synced", correlation, NULL);
}

static void handle_command(struct amora_plugin *p, const cJSON *cmd, cJSON *responses)
{
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(cmd, "command");
	const cJSON *corr = cJSON_GetObjectItemCaseSensitive(cmd, "correlationData");
	const char *correlation = cJSON_IsString(corr) ? corr->valuestring : NULL;

	if(!cJSON_IsObject(cmd) || !cJSON_IsString(name)){
		reply(responses, "Unknown command", correlation, "each command must be an object with a string \"command\"");
	}else if(corr != NULL && !cJSON_IsString(corr)){
		reply(responses, name->valuestring, NULL, "correlationData must be a string");
	}else if(strcmp(name->valuestring, "revokeSessions") == 0){
		revoke_sessions(p, cmd, responses, correlation);
	}else if(strcmp(name->valuestring, "listRevocations") == 0){
		list_revocations(p, responses, correlation);
	}else if(strcmp(name->valuestring, "synced") == 0){
		confirm_synced(p, responses, correlation);
	}else{
		reply(responses, name->valuestring, correlation, "Unknown command (known: revokeSessions, listRevocations, synced)");
	}
}

int amora_on_control(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_control *ed = event_data;
	struct amora_plugin *p = userdata;
	cJSON *tree = cJSON_CreateObject();
	cJSON *responses = cJSON_CreateArray();
	cJSON *request = NULL;
	const cJSON *commands, *cmd;

	(void)event;
	if(tree == NULL || responses == NULL || !cJSON_AddItemToObject(tree, "responses", responses)){
		cJSON_Delete(tree);
		cJSON_Delete(responses);
		return MOSQ_ERR_NOMEM;
	}
	request = ed->payload == NULL ? NULL : amora_json_parse_exact(ed->payload, ed->payloadlen);
	commands = cJSON_GetObjectItemCaseSensitive(request, "commands");
	if(request == NULL){
		reply(responses, "Unknown command", NULL, "Payload not valid JSON");
	}else if(!cJSON_IsArray(commands)){
		reply(responses, "Unknown command", NULL, "Invalid/missing commands: send {\"commands\": [...]}");
	}else{
		cJSON_ArrayForEach(cmd, commands) handle_command(p, cmd, responses);
	}
	cJSON_Delete(request);
	if(p->message_awaits){
		p->message_awaits = false;
		if(wait_for_save(p, mosquitto_client_id(ed->client), tree)){
			amora_control_flush(p, false, true); /* at once, unless a save ran just before */
			return MOSQ_ERR_SUCCESS;
		}
		fail_waiting(tree, "out of memory: send the command again");
	}
	publish_tree(mosquitto_client_id(ed->client), tree);
	cJSON_Delete(tree);
	return MOSQ_ERR_SUCCESS;
}
