/*
 * The deny list of revoked session usernames: memory tree + crash-safe JSON file.
 */
#define _GNU_SOURCE /* twalk_r (glibc 2.30+) */
#include "revocations.h"
#include "token.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A deny list this large is a bug upstream; refuse to load it rather than eat memory. */
#define MAX_FILE_BYTES (64L * 1024 * 1024)

struct amora_revocation {
	char *username;
	long long until;
};

static int by_username(const void *a, const void *b)
{
	return strcmp(((const struct amora_revocation *)a)->username, ((const struct amora_revocation *)b)->username);
}

static void free_entry(void *p)
{
	struct amora_revocation *e = p;
	free(e->username);
	free(e);
}

void amora_revocations_free(struct amora_revocations *r)
{
	tdestroy(r->root, free_entry);
	r->root = NULL;
	r->count = 0;
	free(r->path);
	r->path = NULL;
}

bool amora_revocations_active(const struct amora_revocations *r, const char *username, time_t now)
{
	struct amora_revocation key = {.username = (char *)username};
	struct amora_revocation **found;

	if(username == NULL) return false;
	found = tfind(&key, &r->root, by_username);
	return found != NULL && (*found)->until > (long long)now;
}

int amora_revocations_add(struct amora_revocations *r, const char *username, long long until)
{
	struct amora_revocation *e = calloc(1, sizeof(*e));
	struct amora_revocation **slot;

	if(e == NULL) return -1;
	e->username = strdup(username);
	if(e->username == NULL){
		free(e);
		return -1;
	}
	e->until = until;
	slot = tsearch(e, &r->root, by_username);
	if(slot == NULL){
		free_entry(e);
		return -1;
	}
	if(*slot != e){
		/* Already listed: keep the later end (a revocation is never shortened). */
		if(until > (*slot)->until) (*slot)->until = until;
		free_entry(e);
	}else{
		r->count++;
	}
	return 0;
}

/* twalk_r visits internal nodes three times and leaves once; act once per node. */
#define VISIT_ONCE(which) ((which) == postorder || (which) == leaf)

struct expired_walk {
	time_t now;
	struct amora_revocation **found;
	size_t count;
};

static void collect_expired(const void *node, VISIT which, void *ctx)
{
	struct expired_walk *w = ctx;
	struct amora_revocation *e = *(struct amora_revocation *const *)node;

	if(VISIT_ONCE(which) && e->until <= (long long)w->now) w->found[w->count++] = e;
}

size_t amora_revocations_prune(struct amora_revocations *r, time_t now)
{
	struct expired_walk w = {.now = now, .count = 0};

	if(r->count == 0) return 0;
	/* Deleting while walking is not allowed: collect first. On allocation failure the
	 * expired entries simply stay a little longer (they refuse nothing past `until`). */
	w.found = calloc(r->count, sizeof(*w.found));
	if(w.found == NULL) return 0;
	twalk_r(r->root, collect_expired, &w);
	for(size_t i = 0; i < w.count; i++){
		tdelete(w.found[i], &r->root, by_username);
		free_entry(w.found[i]);
	}
	r->count -= w.count;
	free(w.found);
	return w.count;
}

struct json_walk {
	time_t now;
	cJSON *array;
	bool failed;
};

static void add_json(const void *node, VISIT which, void *ctx)
{
	struct json_walk *w = ctx;
	const struct amora_revocation *e = *(struct amora_revocation *const *)node;
	cJSON *item;

	if(!VISIT_ONCE(which) || w->failed || e->until <= (long long)w->now) return;
	item = cJSON_CreateObject();
	if(item == NULL
			|| cJSON_AddStringToObject(item, "username", e->username) == NULL
			|| cJSON_AddNumberToObject(item, "until", (double)e->until) == NULL
			|| !cJSON_AddItemToArray(w->array, item)){
		cJSON_Delete(item);
		w->failed = true;
	}
}

cJSON *amora_revocations_to_json(const struct amora_revocations *r, time_t now)
{
	struct json_walk w = {.now = now, .array = cJSON_CreateArray(), .failed = false};

	if(w.array == NULL) return NULL;
	twalk_r(r->root, add_json, &w);
	if(w.failed){
		cJSON_Delete(w.array);
		return NULL;
	}
	return w.array;
}

/* Read the whole file; it must be a regular file only its owner can access. */
static char *read_private_file(const char *path, size_t *len, char *err, size_t errlen, bool *missing)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	char *buf = NULL;
	size_t got = 0;

	*missing = false;
	if(fd < 0){
		if(errno == ENOENT){
			*missing = true;
		}else{
			snprintf(err, errlen, "revocations file %s cannot be opened (%s): it must be a regular file the broker's user can read", path, strerror(errno));
		}
		return NULL;
	}
	if(fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)){
		snprintf(err, errlen, "revocations file %s is not a regular file", path);
		goto fail;
	}
	/* Group bits are fine when the group is the broker's own: Kubernetes' fsGroup (the
	 * broker's group in infra/k8s) adds group rw to every file of a volume it relabels. */
	if((st.st_mode & S_IRWXO) || ((st.st_mode & S_IRWXG) && st.st_gid != getegid())){
		snprintf(err, errlen, "revocations file %s is accessible by others or by a group other than the broker's (mode %03o, group %u): chmod 600 it", path, (unsigned)(st.st_mode & 0777), (unsigned)st.st_gid);
		goto fail;
	}
	if(st.st_size > MAX_FILE_BYTES){
		snprintf(err, errlen, "revocations file %s is larger than %ld bytes", path, MAX_FILE_BYTES);
		goto fail;
	}
	buf = malloc((size_t)st.st_size + 1);
	if(buf == NULL){
		snprintf(err, errlen, "out of memory reading %s", path);
		goto fail;
	}
	while(got < (size_t)st.st_size){
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if(n < 0 && errno == EINTR) continue;
		if(n <= 0){
			snprintf(err, errlen, "revocations file %s cannot be read (%s)", path, n < 0 ? strerror(errno) : "shorter than expected");
			goto fail;
		}
		got += (size_t)n;
	}
	buf[got] = '\0';
	close(fd);
	*len = got;
	return buf;
fail:
	free(buf);
	close(fd);
	return NULL;
}

static int load_entries(struct amora_revocations *r, const cJSON *root, time_t now)
{
	const cJSON *version = cJSON_GetObjectItemCaseSensitive(root, "version");
	const cJSON *sessions = cJSON_GetObjectItemCaseSensitive(root, "sessions");
	const cJSON *synced = cJSON_GetObjectItemCaseSensitive(root, "synced");
	const cJSON *item;

	if(!cJSON_IsNumber(version) || version->valuedouble != 1 || !cJSON_IsArray(sessions)) return -1;
	if(synced != NULL && !cJSON_IsBool(synced)) return -1;
	/* No member: a file from before the marker, kept by a running broker: confirmed. */
	r->synced = synced == NULL || cJSON_IsTrue(synced);
	r->synced_on_disk = r->synced;
	cJSON_ArrayForEach(item, sessions){
		const cJSON *username = cJSON_GetObjectItemCaseSensitive(item, "username");
		const cJSON *until = cJSON_GetObjectItemCaseSensitive(item, "until");

		if(!cJSON_IsString(username) || username->valuestring[0] == '\0' || !cJSON_IsNumber(until)
				|| !isfinite(until->valuedouble) || until->valuedouble < 0 || until->valuedouble > 9007199254740992.0
				|| floor(until->valuedouble) != until->valuedouble){
			return -1;
		}
		if((long long)until->valuedouble <= (long long)now) continue;
		if(amora_revocations_add(r, username->valuestring, (long long)until->valuedouble) != 0) return -2;
	}
	return 0;
}

int amora_revocations_load(struct amora_revocations *r, const char *path, time_t now, char *err, size_t errlen)
{
	size_t len = 0;
	bool missing = false;
	char *text;
	cJSON *root;
	int rc;

	memset(r, 0, sizeof(*r));
	r->path = strdup(path);
	if(r->path == NULL){
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	text = read_private_file(path, &len, err, errlen, &missing);
	if(text == NULL){
		if(missing){
			/* First start, or the file was lost: empty and unconfirmed (closed). */
			r->missing = true;
			return 0;
		}
		amora_revocations_free(r);
		return -1;
	}
	root = amora_json_parse_exact(text, len);
	free(text);
	rc = root == NULL ? -1 : load_entries(r, root, now);
	cJSON_Delete(root);
	if(rc != 0){
		snprintf(err, errlen, rc == -2 ? "out of memory loading %s"
				: "revocations file %s is not a deny list ({\"version\":1,\"synced\":true|false,\"sessions\":[{\"username\":...,\"until\":...}]}): restore it from a backup or remove it and let the authz service's reconcile send the revocations again", path);
		amora_revocations_free(r);
		return -1;
	}
	return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while(len > 0){
		ssize_t n = write(fd, buf, len);
		if(n < 0 && errno == EINTR) continue;
		if(n <= 0) return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* fsync the directory so the rename itself survives a power loss. */
static void sync_parent(const char *path)
{
	char *dir = strdup(path);
	char *slash;
	int fd;

	if(dir == NULL) return;
	slash = strrchr(dir, '/');
	if(slash == dir) slash[1] = '\0';
	else if(slash != NULL) *slash = '\0';
	else strcpy(dir, ".");
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if(fd >= 0){
		(void)fsync(fd);
		close(fd);
	}
	free(dir);
}

int amora_revocations_save(struct amora_revocations *r, time_t now, char *err, size_t errlen)
{
	cJSON *root = cJSON_CreateObject();
	cJSON *sessions;
	char *text = NULL;
	char *tmp = NULL;
	size_t tmplen;
	int fd = -1;
	int rc = -1;

	amora_revocations_prune(r, now);
	sessions = amora_revocations_to_json(r, now);
	if(root == NULL || sessions == NULL || cJSON_AddNumberToObject(root, "version", 1) == NULL
			|| cJSON_AddBoolToObject(root, "synced", r->synced) == NULL
			|| !cJSON_AddItemToObject(root, "sessions", sessions)){
		cJSON_Delete(sessions);
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	text = cJSON_PrintUnformatted(root);
	tmplen = strlen(r->path) + 5;
	tmp = malloc(tmplen);
	if(text == NULL || tmp == NULL){
		snprintf(err, errlen, "out of memory");
		goto done;
	}
	snprintf(tmp, tmplen, "%s.tmp", r->path);
	/* A stale temporary file from a crash is ours to replace; O_EXCL then guarantees
	 * that the file we write was created by us with mode 0600 from its first byte. */
	(void)unlink(tmp);
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if(fd < 0 || write_all(fd, text, strlen(text)) != 0 || fsync(fd) != 0){
		snprintf(err, errlen, "cannot write %s (%s): the directory must be writable by the broker's user", tmp, strerror(errno));
		goto done;
	}
	if(close(fd) != 0){
		fd = -1;
		snprintf(err, errlen, "cannot write %s (%s)", tmp, strerror(errno));
		goto done;
	}
	fd = -1;
	if(rename(tmp, r->path) != 0){
		snprintf(err, errlen, "cannot replace %s (%s)", r->path, strerror(errno));
		goto done;
	}
	sync_parent(r->path);
	r->synced_on_disk = r->synced;
	rc = 0;
done:
	if(fd >= 0) close(fd);
	if(rc != 0 && tmp != NULL) (void)unlink(tmp);
	free(tmp);
	free(text);
	cJSON_Delete(root);
	return rc;
}
