/*
 * State shared by the plugin's glue (plugin.c) and its control topic handler (control.c).
 */
#ifndef AMORA_PLUGIN_H
#define AMORA_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>
#include <time.h>

#include <mosquitto_broker.h>

#include "revocations.h"
#include "token.h"

#define AMORA_CONTROL_TOPIC "$CONTROL/amora-auth/v1"
#define AMORA_RESPONSE_TOPIC "$CONTROL/amora-auth/v1/response"

struct amora_plugin {
	mosquitto_plugin_id_t *id;
	char *public_keys;
	char *issuer;
	char *audience;
	char *revocations_file;
	char *prefix;
	char *max_lifetime; /* option text; max_lifetime_s once parsed (0: no bound) */
	long long max_lifetime_s;
	size_t prefix_len;
	struct amora_keyring keys;
	struct amora_revocations revocations;
	void *clients; /* tsearch tree of per-client ACLs, keyed by client id */
	size_t client_count;
	time_t next_prune;
	bool reloading; /* between MOSQ_EVT_RELOAD and the next tick: mosquitto's re-auth pass */
	/* Group commit of the deny list (control.c): revocations are applied at once, saved
	 * together, and answered once saved. */
	struct amora_reply *replies; /* answers waiting for the save, oldest first */
	bool dirty;                  /* revocations applied but not saved yet */
	bool message_awaits;         /* the message being handled waits for a save */
	size_t unsaved_sessions, unsaved_commands;
	long long next_save_ms;      /* CLOCK_MONOTONIC: no save before this */
};

/* Is `username` one of the plugin's (starts with the prefix)? */
static inline bool amora_is_session(const struct amora_plugin *p, const char *username)
{
	return username != NULL && strncmp(username, p->prefix, p->prefix_len) == 0;
}
/* Copy at most 128 printable bytes of a client-chosen string, for log lines. */
void amora_printable(const char *in, char *out, size_t outlen);
/* MOSQ_EVT_CONTROL on AMORA_CONTROL_TOPIC. */
int amora_on_control(int event, void *event_data, void *userdata);
/* Save the deny list when revocations wait and a save is due (or `force`), then send (if
 * `publish`) and free the answers that waited for it. Called on every tick. */
void amora_control_flush(struct amora_plugin *p, bool force, bool publish);

#endif
