-- capra control database, version 4: the conflict history of multi-master
-- syncs. One row per key changed on two or more sources in one run (or
-- changed on a source while a run applied it), with who competed, when,
-- who won and why. `capra conflicts` reads it; the purger keeps it as long
-- as the run history (run_history_days).
CREATE TABLE capra.conflict (
    id         bigserial PRIMARY KEY,
    run        bigint,
    sync       text NOT NULL,
    tbl        text NOT NULL,
    key        jsonb NOT NULL,
    contenders jsonb NOT NULL,
    winner     text NOT NULL,
    reason     text NOT NULL,
    ctime      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX conflict_sync_ctime ON capra.conflict (sync, ctime);
CREATE INDEX conflict_ctime ON capra.conflict (ctime);

-- Row filters: only rows matching this expression replicate from the
-- table's sources (NULL: every row).
ALTER TABLE capra.relation ADD COLUMN filter text;

-- When a sync last ran for its schedule: a slot missed while no daemon ran
-- is run once at the next start (not once per missed slot).
ALTER TABLE capra.sync_state ADD COLUMN last_schedule timestamptz;
-- ... and the schedule that slot belonged to (a changed schedule starts anew).
ALTER TABLE capra.sync_state ADD COLUMN last_schedule_spec text;
