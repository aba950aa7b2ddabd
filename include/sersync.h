/*
 * sersync.h - the whole contract between the SER module (C) and the
 * sersync engine (Rust staticlib).
 *
 * build.rs runs bindgen over this file; tests/abi.c pins sizes and offsets
 * from the C side. Change both sides together.
 *
 * Strings cross as (pointer, length) pairs and are never NUL-terminated
 * unless stated. A struct sersync_str with len 0 is the empty string; s may
 * then be NULL.
 *
 * Process rules (Kamailio forks its workers after mod_init):
 *  - sersync_shared_create() is called once in mod_init, before any fork;
 *    it maps the cross-process queue and status area and starts no thread.
 *  - sersync_publish() is called from SIP worker processes (usrloc
 *    callbacks). It never blocks, never allocates in SER's pkg/shm memory,
 *    does no I/O beyond one eventfd write, and returns in microseconds.
 *  - sersync_engine_run() is called once, in the process the module forks
 *    for sersync; it starts all Rust threads there and does not return
 *    while the engine runs.
 *  - sersync_status_read() and sersync_apply_decode() may be called from
 *    any process (RPC handlers); they start no thread.
 * Every function catches Rust panics and reports SERSYNC_E_PANIC.
 */

#ifndef SERSYNC_H
#define SERSYNC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Return codes. Numbers are part of the contract and never reused. */
enum sersync_rc {
	SERSYNC_OK = 0,
	SERSYNC_E_NULL = 1,       /* a required pointer argument was NULL */
	SERSYNC_E_PANIC = 2,      /* an internal fault was caught at the boundary */
	SERSYNC_E_QUEUE_FULL = 3, /* the worker->engine queue is full */
	SERSYNC_E_TOO_LARGE = 4,  /* the record does not fit one queue slot */
	SERSYNC_E_CONFIG = 5,     /* bad configuration; see the error text */
	SERSYNC_E_DECODE = 6,     /* malformed payload */
	SERSYNC_E_IO = 7,         /* an operating-system call failed */
	SERSYNC_E_JOURNAL = 8,    /* the journal cannot be opened or written */
	SERSYNC_E_CALLBACK = 9,   /* an apply callback reported a failure */
	SERSYNC_E_TIMEOUT = 10,   /* not journaled within the time allowed */
	SERSYNC_SUPERSEDED = 11,  /* not an error: usrloc holds a newer version
	                           * (sersync_order_admit) */
	SERSYNC_E_REFUSED = 12,   /* an apply callback refused its record for
	                           * good (SERSYNC_APPLY_REFUSED) */
	SERSYNC_E_BUSY = 13       /* a resync already runs (sersync_resync) */
};

struct sersync_str {
	const char *s;
	size_t len;
};

/* What a record does at the receiver. */
enum sersync_op {
	SERSYNC_OP_UPSERT = 1,     /* insert the record or update it in place */
	SERSYNC_OP_DELETE = 2,     /* remove the record (by its key) */
	/* Alias table scans (sersync_publish_alias only): SCAN_BEGIN, then one
	 * UPSERT per row the table holds, then SCAN_END. The engine journals
	 * only rows that changed, and a DELETE for every alias it knew in that
	 * table that the scan did not report, unless there are more than the
	 * configured limit (alias_scan_max_delete*): then it deletes nothing
	 * and reports alias_scan_refused. SCAN_END_CONFIRMED ends a scan
	 * whose deletions the operator confirmed: no limit. SCAN_ABORT ends a
	 * scan that gave up: the engine deletes nothing for it. A scan that
	 * sees no end at all is ended by the engine once its queue is empty
	 * and no row came for a minute. Only the table field is read. */
	SERSYNC_OP_SCAN_BEGIN = 3,
	SERSYNC_OP_SCAN_END = 4,
	SERSYNC_OP_SCAN_ABORT = 5,
	SERSYNC_OP_SCAN_END_CONFIRMED = 6
};

/*
 * One usrloc contact, every field save() stores. The key is
 * (domain, aor, contact). For SERSYNC_OP_DELETE only the key, callid and
 * ruid are meaningful.
 */
struct sersync_contact {
	int32_t op;                  /* enum sersync_op */
	int32_t q;                   /* qvalue: -1 unset, else 0..1000 */
	struct sersync_str domain;   /* usrloc table name, e.g. "location" */
	struct sersync_str aor;
	struct sersync_str contact;
	struct sersync_str ruid;
	struct sersync_str received; /* NAT source URI, may be empty */
	struct sersync_str path;
	struct sersync_str callid;
	struct sersync_str user_agent;
	struct sersync_str socket;   /* origin's "proto:ip:port", may be empty */
	struct sersync_str instance; /* +sip.instance, may be empty */
	int64_t expires;             /* absolute unix time; 0 = permanent */
	int64_t last_modified;       /* unix time */
	int32_t cseq;
	uint32_t flags;              /* ucontact flags (FL_EXPCLB masked off) */
	uint32_t cflags;             /* branch flags */
	uint32_t methods;
	uint32_t reg_id;
	int32_t server_id;           /* server_id of the origin node */
	int32_t _pad;
	uint64_t stamp;              /* the change's version (the cluster's
	                              * hybrid logical clock): set on what
	                              * sersync_apply_decode() hands out;
	                              * sersync_publish() ignores it and
	                              * stamps the change itself */
};

/*
 * One alias mapping as alias_db keeps it: alias_username@alias_domain ->
 * username@domain. The key is all five strings: an alias may map to
 * several targets (alias_db appends branches).
 */
struct sersync_alias {
	int32_t op;                      /* enum sersync_op */
	int32_t _pad;
	struct sersync_str table;        /* alias_db's table, e.g. "dbaliases" */
	struct sersync_str alias_username;
	struct sersync_str alias_domain;
	struct sersync_str username;
	struct sersync_str domain;
};

/* Configuration as the modparams give it. */
struct sersync_config {
	struct sersync_str node_id;  /* unique per node */
	struct sersync_str listen;   /* "tcp:ip:port" */
	const struct sersync_str *peers; /* "tcp:ip:port" each */
	size_t npeers;
	struct sersync_str secret;   /* shared by the whole cluster */
	struct sersync_str journal;  /* path of the SQLite journal */
	struct sersync_str fifo;     /* SER's RPC door: FIFO or unix socket */
	struct sersync_str db_url;   /* SER's database, "sqlite:///path" */
	struct sersync_str fifo_reply_dir; /* jsonrpcs fifo_reply_dir; empty:
	                                    * "/tmp/" (jsonrpcs' default) */
	struct sersync_str domains;  /* usrloc tables, comma-separated; empty:
	                              * "location" */
	uint64_t retention_secs;     /* journal entries kept at most this long
	                              * (0: a day) */
	uint64_t retention_records;  /* and at most this many (0: a million) */
	int32_t ul_db_mode;          /* usrloc's db_mode: 0 keeps contacts in
	                              * memory only, so every start restores
	                              * them from the journal */
	/* an alias scan refuses to delete more than alias_scan_max_delete
	 * aliases when that is also more than alias_scan_max_delete_pct
	 * percent of the table (and any, when it read no row at all) */
	uint32_t alias_scan_max_delete;
	uint32_t alias_scan_max_delete_pct;
	struct sersync_str runtime_dir; /* SER's runtime_dir (-Y): where the
	                                 * engine binds its reply socket;
	                                 * empty: fifo_reply_dir */
	uint32_t check_interval;     /* seconds between two checks of SER's
	                              * usrloc against the journal's state
	                              * (sersync.digest); 0: no check */
	uint32_t peer_check_interval; /* seconds between two checks of the
	                               * journal's state against each peer's
	                               * (protocol v3); 0: 60 */
	uint32_t max_clock_skew_ms;  /* a peer's batch stamped more than this
	                              * ahead of this node's clock is refused
	                              * (the origin resends it); 0: 5000 */
	struct sersync_str secret2;  /* a second secret line: accepted from
	                              * dialing peers during a rolling change
	                              * of the secret; empty: none */
	uint32_t accept_clear_peers; /* nonzero: serve peers of protocol v3
	                              * or older in clear (temporary, for an
	                              * upgrade) */
};

/* Log levels passed to the logger callback. */
enum sersync_log_level {
	SERSYNC_LOG_ERR = 1,
	SERSYNC_LOG_WARN = 2,
	SERSYNC_LOG_INFO = 3,
	SERSYNC_LOG_DBG = 4
};

/*
 * Logger callback. Called from Rust threads of the sersync process, one
 * call at a time. It must not call pkg_malloc and must not block. msg is
 * not NUL-terminated.
 */
typedef void (*sersync_log_fn)(int level, const char *msg, size_t len);

/* Opaque: the shared-memory region (queue and status) mapped before fork. */
struct sersync_shared;

#define SERSYNC_MAX_PEERS 32
#define SERSYNC_ID_MAX 64
#define SERSYNC_ADDR_MAX 96
#define SERSYNC_ERR_MAX 160
/* quarantined records listed in the status area (the oldest) */
#define SERSYNC_QUARANTINE_SHOWN 16
#define SERSYNC_RECORD_MAX 256

enum sersync_peer_state {
	SERSYNC_PEER_DOWN = 0,        /* not connected; retrying with backoff */
	SERSYNC_PEER_CONNECTING = 1,  /* TCP or handshake in progress */
	SERSYNC_PEER_UP = 2,          /* authenticated, streaming */
	SERSYNC_PEER_REFUSED = 3      /* handshake refused (secret, id clash) */
};

/* All strings below are NUL-terminated (truncated to fit). */
struct sersync_peer_status {
	char node_id[SERSYNC_ID_MAX];   /* empty until the first handshake */
	char address[SERSYNC_ADDR_MAX];
	char last_error[SERSYNC_ERR_MAX];
	int32_t state;                  /* enum sersync_peer_state */
	int32_t _pad;
	uint64_t sent;      /* records sent on this link since start */
	uint64_t acked;     /* highest local sequence the peer acknowledged */
	uint64_t pending;   /* local records the peer has not acknowledged */
	uint64_t lag_ms;    /* age of the oldest unacknowledged record */
	uint64_t received;  /* records received from this peer since start */
	uint64_t snapshot_sent;     /* rows of the snapshot being sent to it */
	uint64_t snapshot_total;    /* rows in it (sent == total: complete) */
	uint64_t snapshot_received; /* rows of snapshots received from it */
};

/* One quarantined remote change (the oldest are listed in the status).
 * Strings NUL-terminated (truncated to fit). */
struct sersync_quarantined {
	uint64_t id;        /* its number in the quarantine, never reused */
	uint64_t seq;       /* the origin's sequence; 0: not known (it came in
	                     * a snapshot, or was restored) */
	uint64_t stamp;     /* the change's version (hybrid logical clock) */
	int64_t at;         /* unix time it was set aside */
	uint32_t tries;     /* attempts before it was set aside */
	uint32_t _pad;
	char origin[SERSYNC_ID_MAX];
	char record[SERSYNC_RECORD_MAX]; /* what it is, e.g. "upsert contact
	                                  * aliases/1234@example.com
	                                  * sip:alice@10.0.0.1" */
	char reason[SERSYNC_ERR_MAX];
};

struct sersync_status {
	char node_id[SERSYNC_ID_MAX];
	char last_error[SERSYNC_ERR_MAX];
	int32_t running;          /* 1 once the engine serves */
	uint32_t npeers;
	uint64_t queue_depth;     /* records waiting in the worker queue */
	uint64_t queue_dropped;   /* records the queue could not take */
	uint64_t journaled;       /* local records journaled since start */
	uint64_t last_seq;        /* highest local journal sequence */
	uint64_t applied;         /* remote records applied since start */
	uint64_t apply_pending;   /* remote records staged, not yet applied */
	uint64_t apply_failures;  /* apply attempts that failed (retried) */
	uint64_t applied_via_db;  /* remote records written to SER's database */
	uint64_t journal_entries; /* entries in the journal's log now */
	struct sersync_peer_status peers[SERSYNC_MAX_PEERS];
	uint64_t restored;        /* contacts restored into SER since start */
	uint64_t restore_pending; /* contacts still to restore */
	uint64_t set_aside;       /* remote changes whose record could not be
	                           * decoded (a kind newer than this node) */
	uint64_t incarnation;     /* this run's incarnation */
	uint64_t apply_superseded; /* remote changes not written into usrloc
	                            * because it held a newer version */
	uint64_t quarantined;     /* remote changes set aside now (SER refused
	                           * them): sersync.quarantine lists them */
	char quarantine_last_reason[SERSYNC_ERR_MAX]; /* of the newest one */
	uint32_t nquarantine;     /* entries in quarantine[] */
	uint32_t _pad2;
	struct sersync_quarantined quarantine[SERSYNC_QUARANTINE_SHOWN];
	uint64_t alias_scans;      /* alias table scans ended by their end
	                            * marker since start (refused included) */
	uint64_t alias_scan_removed; /* aliases the latest scan deleted */
	uint64_t alias_scan_refused; /* deletions the latest scan refused
	                              * (over the limit; 0: none) */
	/* the check of SER's usrloc against the journal's state
	 * (check_interval): checks made since start, ranges compared key by
	 * key (their digests differed), contacts found different twice in a
	 * row, and repairs made (applied into SER or journaled) */
	uint64_t checks;
	uint64_t ranges_compared;
	uint64_t divergences;
	uint64_t repaired;
	/* the check of the journal's state against each peer's (protocol v3):
	 * checks made, ranges compared key by key, keys found differing,
	 * versions staged by checks, check frames ignored (too frequent, out
	 * of bounds, answering no check) */
	uint64_t peer_checks;
	uint64_t peer_check_ranges;
	uint64_t peer_check_divergences;
	uint64_t peer_check_repaired;
	uint64_t peer_check_ignored;
	/* the bound on clock skew (max_clock_skew): batches from peers refused
	 * here (stamped beyond it, or invalid), this node's batches peers
	 * refused, and the latest reason on either side (empty: none) */
	uint64_t clock_refused;
	uint64_t clock_refused_by_peers;
	char clock_last_reason[SERSYNC_ERR_MAX];
	/* links refused because two nodes run at once under one node id (a
	 * clone), and the latest such refusal (empty: none) */
	uint64_t clones_refused;
	char clone_last_reason[SERSYNC_ERR_MAX];
	/* incoming connections closed before they authenticated: refused
	 * (bad handshake, wrong secret) or dropped (deadline, caps on
	 * unauthenticated connections, errors); not those closed by the other
	 * side before sending a byte (port probes) */
	uint64_t preauth_refused;
	/* sersync.resync: the latest one (resync_state NONE: none since
	 * start). resync_peer: the peer it compares with, empty for every
	 * peer; peers: those it covers and those done (answered, failed or
	 * skipped); ranges: of 256 key ranges per peer and round, those that
	 * differed and those compared key by key; divergences: keys found
	 * different (with peers, and between SER and the state); repaired:
	 * versions sent, staged or journaled by it; resync_result: what it
	 * found, or why it failed, once over. Unix times; finished 0 while
	 * it runs. */
	int32_t resync_state;        /* enum sersync_resync_state */
	uint32_t resync_peers_total;
	uint32_t resync_peers_done;
	uint32_t _pad3;
	char resync_peer[SERSYNC_ID_MAX];
	int64_t resync_started;
	int64_t resync_finished;
	uint64_t resync_ranges_differing;
	uint64_t resync_ranges_compared;
	uint64_t resync_divergences;
	uint64_t resync_repaired;
	uint64_t resyncs;            /* resyncs over since start */
	char resync_result[SERSYNC_ERR_MAX];
	/* each peers[i]'s connections that came up since start: a watcher of
	 * peers[].state that sees it grow while the peer is up missed a
	 * drop (event_route[sersync:peer-down]) */
	uint64_t peer_connects[SERSYNC_MAX_PEERS];
};

/* What sersync.resync is doing (sersync_status.resync_state). */
enum sersync_resync_state {
	SERSYNC_RESYNC_NONE = 0,      /* none since start */
	SERSYNC_RESYNC_PEERS = 1,     /* comparing the state with peers */
	SERSYNC_RESYNC_SER = 2,       /* comparing SER's usrloc with the state */
	SERSYNC_RESYNC_DONE = 3,      /* over; resync_result says what it did */
	SERSYNC_RESYNC_FAILED = 4     /* over without a comparison; why in
	                               * resync_result */
};

/* Registers the logger. May be called in any process, before or after
 * fork; the callback is per process. NULL disables logging. */
int sersync_set_logger(sersync_log_fn fn);

/* Validates cfg without side effects. On error writes a NUL-terminated
 * message (truncated to errlen) into err and returns SERSYNC_E_CONFIG. */
int sersync_config_check(const struct sersync_config *cfg, char *err,
		size_t errlen);

/* Maps the shared region: a queue of queue_slots slots (rounded up to a
 * power of two, at least 64) and the status area. Call before fork. */
int sersync_shared_create(uint32_t queue_slots, struct sersync_shared **out);

/* Hands one contact change to the engine. Called in SIP workers, from
 * usrloc's callback, with usrloc's lock of c->aor held: stamps the change
 * from the node's clock and notes that usrloc now holds that version of
 * the contact (see sersync_order_admit()). Copies every field; c may be
 * freed when it returns. Returns SERSYNC_OK, SERSYNC_E_QUEUE_FULL or
 * SERSYNC_E_TOO_LARGE (both counted in queue_dropped). */
int sersync_publish(struct sersync_shared *sh, const struct sersync_contact *c);

/* Ordering in usrloc: may the remote change c (with c->stamp) be written
 * into usrloc? Call with usrloc's lock of c->aor held, as found before the
 * write: held_last_modified is the last_modified of the live contact
 * usrloc holds under c's key, or -1 if none. Returns SERSYNC_OK (write it;
 * noted as the version usrloc now holds), SERSYNC_SUPERSEDED (usrloc holds
 * a newer version of the contact: leave it; counted in apply_superseded)
 * or an error code. Versions are remembered for the most recent changes (about
 * as many as the queue has slots); for an older contact the comparison
 * falls back to last_modified. */
int sersync_order_admit(struct sersync_shared *sh,
		const struct sersync_contact *c, int64_t held_last_modified);

/* Hands one alias change (or a scan marker) to the engine. Same rules
 * and return codes as sersync_publish(). Called in any SER process. */
int sersync_publish_alias(struct sersync_shared *sh,
		const struct sersync_alias *a);

/* Waits until every record this process has published so far is durably
 * in the journal (the engine committed it), at most timeout_ms. For
 * modparam durability "journal": called after sersync_publish() so that
 * save() returns only once the change survives a crash. Returns
 * SERSYNC_OK, or SERSYNC_E_TIMEOUT (the record stays queued and is
 * journaled later, unless the engine is down). Spins briefly, then
 * sleeps on a futex in the shared region that the engine wakes when it
 * marks records durable; never takes a lock. */
int sersync_journal_wait(struct sersync_shared *sh, uint32_t timeout_ms);

/* Removes the member node_id from the cluster for good (sersync.forget):
 * the engine stops dialing it, releases the journal entries kept for it,
 * refuses it from then on, and tells every other member, which do the
 * same. A node that is merely down must not be forgotten: it is caught up
 * when it returns. Called in any SER process; queued like a change. */
int sersync_forget(struct sersync_shared *sh, const char *node_id, size_t len);

/* sersync.resync: compares this node's state with the peer node_id's
 * (len bytes; len 0: with every peer's) now, key range by key range, and
 * sends or takes what differs; then SER's usrloc with the state, and
 * repairs what differs (the periodic checks' machinery, at once and
 * whatever their intervals). One resync at a time: SERSYNC_E_BUSY while
 * one runs (sersync_status shows its progress); SERSYNC_E_DECODE for a
 * node_id that is not UTF-8 or too long. Does not check that node_id is
 * a member (the caller reads the status). Called in any SER process;
 * queued like a change, so it returns before the engine acts. */
int sersync_resync(struct sersync_shared *sh, const char *node_id, size_t len);

/* What sersync_quarantine_ctl() does with quarantined changes. */
enum sersync_quarantine_action {
	SERSYNC_QUARANTINE_RETRY = 1, /* back to the applier, which tries again */
	SERSYNC_QUARANTINE_DROP = 2   /* forgotten: SER gets it only if a newer
	                               * version comes */
};

/* sersync.quarantine_retry / _drop: applies action to the quarantined
 * change id (as sersync_status lists it), or to all of them when id is 0.
 * Called in any SER process; queued like a change, so it returns before
 * the engine acts (the status shows the outcome). */
int sersync_quarantine_ctl(struct sersync_shared *sh, int32_t action,
		uint64_t id);

/* Runs the engine in the calling process: journal, network, applier.
 * Copies cfg. Does not return while the engine runs; returns an error code
 * if cfg is invalid or the engine cannot start at all. */
int sersync_engine_run(struct sersync_shared *sh,
		const struct sersync_config *cfg);

/* Copies a consistent snapshot of the engine's status into out. */
int sersync_status_read(struct sersync_shared *sh, struct sersync_status *out);

/* Apply callbacks: ctx as given; the record and its strings are valid only
 * during the call. Return 0 on success; SERSYNC_APPLY_REFUSED when this
 * node cannot apply the record as it is, whatever the moment (a usrloc
 * table it does not have, an invalid field): the engine quarantines it;
 * another negative value on a failure that may pass (memory, database):
 * the engine tries again, a bounded number of times. */
#define SERSYNC_APPLY_REFUSED (-2)

typedef int (*sersync_apply_fn)(void *ctx, const struct sersync_contact *c);
typedef int (*sersync_apply_alias_fn)(void *ctx, const struct sersync_alias *a);

struct sersync_apply_ops {
	sersync_apply_fn contact;     /* required */
	sersync_apply_alias_fn alias; /* required */
	void *ctx;
};

/* Decodes a sersync.apply payload (the text the engine sends through SER's
 * RPC door) and calls the matching callback once per record, in order
 * (aliases only with SERSYNC_OP_UPSERT or SERSYNC_OP_DELETE). Stops at the
 * first callback failure and returns SERSYNC_E_REFUSED if the callback
 * returned SERSYNC_APPLY_REFUSED, else SERSYNC_E_CALLBACK; *count then
 * is the index of the record that failed. A malformed
 * payload returns SERSYNC_E_DECODE before any callback runs, and what is
 * wrong with it in err (NUL-terminated, at most errlen bytes; err may be
 * NULL). If count is not NULL it receives the number of records applied. */
int sersync_apply_decode(const char *payload, size_t len,
		const struct sersync_apply_ops *ops, uint32_t *count, char *err,
		size_t errlen);

/*
 * The check of SER against the journal (sersync.digest,
 * sersync.digest_range): the RPC process walks usrloc's tables inside
 * SER, one slot at a time under usrloc's own slot lock, and hands each
 * live contact (filled as the callback fills it) to a walk; the walk
 * keeps either the digest of every comparable contact (ranges NULL or
 * empty) or the comparable contacts of the listed ranges, and encodes
 * them for the reply. "Comparable" and the digest are src/digest.rs's:
 * the engine computes the journal's side with the same code.
 * Called in any SER process; no thread, no lock, no SER memory.
 */
struct sersync_walk;

/* A new walk for a check made at unix time now. ranges: NULL/empty for
 * the digest, else comma-separated range numbers (0..255), e.g. "3,17"
 * (their contacts or aliases), "h:3,17" (their contacts' version hashes)
 * or "p:" and up to 2500 comma-separated hex version hashes (those
 * contacts). Returns SERSYNC_OK (*out set), SERSYNC_E_DECODE (bad
 * ranges). */
int sersync_walk_new(int64_t now, const char *ranges, size_t len,
		struct sersync_walk **out);

/* Counts (or keeps) one contact; its strings are copied if kept. */
int sersync_walk_add(struct sersync_walk *w, const struct sersync_contact *c);

/* Counts (or keeps) one row of the alias table (sersync.alias_digest;
 * a.op SERSYNC_OP_UPSERT); its strings are copied if kept. One walk takes
 * contacts or aliases, never both. */
int sersync_walk_add_alias(struct sersync_walk *w, const struct sersync_alias *a);

/* Writes the walk's reply text (NUL-terminated) into out: base64 of the
 * encoded digest, or of the kept contacts from index skip on, as many as
 * fit in outlen. *next: the index of the first contact left out, 0 when
 * none is. *count: contacts counted (digest) or kept (ranges). */
int sersync_walk_reply(struct sersync_walk *w, uint64_t skip, char *out,
		size_t outlen, uint64_t *next, uint64_t *count);

/* Frees the walk (NULL is ignored). */
int sersync_walk_free(struct sersync_walk *w);

/* sersync.apply's token: random, drawn by sersync_shared_create(), held
 * by the processes SER forks and nothing else. The engine sends it as
 * sersync.apply's first parameter; the RPC handler checks it with this
 * (in constant time): SERSYNC_OK when token (len bytes) is it,
 * SERSYNC_E_REFUSED when not. Any process. */
int sersync_apply_token_check(struct sersync_shared *sh, const char *token,
		size_t len);

/* Writes the token to the file path (len bytes, not NUL-terminated),
 * mode 0600, replacing it (never through a symbolic link): modparam
 * apply_token_file, for tests and benches. SERSYNC_E_IO on failure. Call
 * in mod_init. */
int sersync_apply_token_write(struct sersync_shared *sh, const char *path,
		size_t len);

#ifdef __cplusplus
}
#endif

#endif /* SERSYNC_H */
