/*
 * libFuzzer over the control topic and the deny list: control.c and revocations.c with the
 * few broker functions they call replaced by checks.
 *
 * The first byte picks what the rest is:
 *   even: a `$CONTROL/amora-auth/v1` payload, handled on an empty deny list; the answer
 *         must be one JSON object with a `responses` array, and every kicked username and
 *         every listed entry must carry the prefix;
 *   odd:  a revocations file; a file that loads must survive save + load unchanged.
 *
 *   make fuzz && build/fuzz_control -max_total_time=300 fuzz/corpus_control
 *
 * The deny list is written to /dev/shm (tmpfs: an fsync there costs nothing) and removed
 * after every run.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "plugin.h"

#define FUZZ_NOW 1764460000

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static char g_path[96];
static struct amora_plugin g_plugin;

/* ---- the broker functions control.c uses --------------------------------------- */

int mosquitto_kick_client_by_username(const char *username, bool with_will)
{
	if(username == NULL || with_will || strncmp(username, "sess.", 5) != 0) abort();
	return MOSQ_ERR_SUCCESS;
}

const char *mosquitto_client_id(const struct mosquitto *client)
{
	(void)client;
	return "fuzz-admin";
}

void mosquitto_log_printf(int level, const char *fmt, ...)
{
	(void)level;
	(void)fmt;
}

int mosquitto_broker_publish_copy(const char *clientid, const char *topic, int payloadlen, const void *payload,
		int qos, bool retain, mosquitto_property *properties)
{
	cJSON *answer = cJSON_ParseWithLength(payload, (size_t)payloadlen);
	const cJSON *responses = cJSON_GetObjectItemCaseSensitive(answer, "responses");
	const cJSON *r, *s;

	(void)qos;
	(void)retain;
	if(strcmp(clientid, "fuzz-admin") != 0 || strcmp(topic, AMORA_RESPONSE_TOPIC) != 0 || properties != NULL) abort();
	if(!cJSON_IsArray(responses)) abort();
	cJSON_ArrayForEach(r, responses){
		if(!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(r, "command"))) abort();
		cJSON_ArrayForEach(s, cJSON_GetObjectItemCaseSensitive(r, "sessions")){
			const cJSON *u = cJSON_GetObjectItemCaseSensitive(s, "username");
			if(!cJSON_IsString(u) || strncmp(u->valuestring, "sess.", 5) != 0) abort();
		}
	}
	cJSON_Delete(answer);
	return MOSQ_ERR_SUCCESS;
}

/* ---- the harness ---------------------------------------------------------------- */

/* Every run removes its file again (libFuzzer leaves without atexit handlers). */
static void remove_files(void)
{
	char tmp[128];

	snprintf(tmp, sizeof(tmp), "%s.tmp", g_path);
	unlink(tmp);
	unlink(g_path);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	snprintf(g_path, sizeof(g_path), "/dev/shm/amora-fuzz-control-%ld.json", (long)getpid());
	g_plugin.prefix = "sess.";
	g_plugin.prefix_len = 5;
	return 0;
}

static void control(const uint8_t *data, size_t size)
{
	struct mosquitto_evt_control ed;
	char err[512];
	char *payload;

	unlink(g_path);
	if(amora_revocations_load(&g_plugin.revocations, g_path, FUZZ_NOW, err, sizeof(err)) != 0) abort();
	/* mosquitto hands a payload with a NUL after it (handle_publish.c). */
	payload = malloc(size + 1);
	if(payload == NULL) abort();
	memcpy(payload, data, size);
	payload[size] = '\0';
	memset(&ed, 0, sizeof(ed));
	ed.topic = AMORA_CONTROL_TOPIC;
	ed.payload = payload;
	ed.payloadlen = (uint32_t)size;
	if(amora_on_control(MOSQ_EVT_CONTROL, &ed, &g_plugin) != MOSQ_ERR_SUCCESS) abort();
	amora_control_flush(&g_plugin, true, true); /* the answers that waited for the save */
	if(g_plugin.replies != NULL || g_plugin.dirty) abort();
	amora_revocations_free(&g_plugin.revocations);
	free(payload);
	remove_files();
}

static void file_roundtrip(const uint8_t *data, size_t size)
{
	struct amora_revocations first, second;
	char err[512];
	int fd;

	unlink(g_path);
	fd = open(g_path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if(fd < 0 || write(fd, data, size) != (ssize_t)size || close(fd) != 0) abort();
	if(amora_revocations_load(&first, g_path, FUZZ_NOW, err, sizeof(err)) != 0){
		remove_files();
		return;
	}
	if(amora_revocations_save(&first, FUZZ_NOW, err, sizeof(err)) != 0) abort();
	if(amora_revocations_load(&second, g_path, FUZZ_NOW, err, sizeof(err)) != 0) abort();
	if(second.count != first.count || second.synced != first.synced || first.synced_on_disk != first.synced) abort();
	amora_revocations_free(&first);
	amora_revocations_free(&second);
	remove_files();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if(size == 0) return 0;
	if(data[0] & 1) file_roundtrip(data + 1, size - 1);
	else control(data + 1, size - 1);
	return 0;
}
