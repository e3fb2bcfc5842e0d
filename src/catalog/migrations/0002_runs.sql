-- capra control database, version 2: the engine's bookkeeping.

-- One row per run of a sync (empty runs are not recorded; sync_state keeps
-- when the last one happened). Pruned after run_history_days, except the
-- last good and last bad run of each sync.
CREATE TABLE capra.run (
    id        bigserial PRIMARY KEY,
    sync      text NOT NULL REFERENCES capra.sync (name) ON DELETE CASCADE,
    started   timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended     timestamptz,
    state     text NOT NULL CHECK (state IN ('running', 'good', 'bad')),
    reason    text NOT NULL,
    inserts   bigint NOT NULL DEFAULT 0,
    deletes   bigint NOT NULL DEFAULT 0,
    truncates bigint NOT NULL DEFAULT 0,
    conflicts bigint NOT NULL DEFAULT 0,
    tables    integer NOT NULL DEFAULT 0,
    error     text,
    sqlstate  text,
    details   jsonb,
    pid       integer,
    host      text
);
CREATE INDEX run_sync_id ON capra.run (sync, id DESC);

-- Quick per-sync state for status, without scanning history.
CREATE TABLE capra.sync_state (
    sync       text PRIMARY KEY REFERENCES capra.sync (name) ON DELETE CASCADE,
    last_good  bigint,
    last_bad   bigint,
    last_empty timestamptz,
    failures   integer NOT NULL DEFAULT 0,
    next_retry timestamptz,
    next_run   timestamptz
);

-- Kick requests from `capra kick`; the daemon answers each with the run that
-- served it, so `kick SYNC TIMEOUT` can wait for a result.
CREATE TABLE capra.kick (
    id        bigserial PRIMARY KEY,
    sync      text NOT NULL REFERENCES capra.sync (name) ON DELETE CASCADE,
    requested timestamptz NOT NULL DEFAULT clock_timestamp(),
    run_id    bigint,
    done      timestamptz,
    ok        boolean,
    error     text
);
CREATE INDEX kick_pending ON capra.kick (id) WHERE done IS NULL;

-- The running daemon (its liveness is the advisory lock it holds).
CREATE TABLE capra.daemon (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pid       integer NOT NULL,
    host      text NOT NULL,
    started   timestamptz NOT NULL,
    heartbeat timestamptz NOT NULL,
    version   text NOT NULL,
    reason    text,
    logdest   text
);
