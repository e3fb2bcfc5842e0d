-- capra control database, version 7: several daemons, one leader.
-- The lease is one row, taken and renewed by one conditional UPDATE timed
-- by this server's clock only (never a daemon's); its epoch only grows,
-- and fences on the written databases carry it (see catalog::lease).
CREATE TABLE capra.lease (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch         bigint NOT NULL DEFAULT 0,
    -- A random id per daemon process (pids repeat across hosts).
    holder        text,
    host          text,
    pid           integer,
    -- The holder's lease session, so a standby can prove it gone.
    backend_pid   integer,
    backend_start timestamptz,
    since         timestamptz,
    lease_until   timestamptz,
    renewed       timestamptz,
    -- Why the last holder let go ('stop', 'handover'); NULL while held.
    released      text
);
INSERT INTO capra.lease DEFAULT VALUES;

-- Every daemon, leader or standby, with its heartbeat.
CREATE TABLE capra.daemons (
    id        text PRIMARY KEY,
    host      text NOT NULL,
    pid       integer NOT NULL,
    piddir    text,
    started   timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat timestamptz NOT NULL DEFAULT clock_timestamp(),
    version   text NOT NULL,
    role      text NOT NULL CHECK (role IN ('leader', 'standby', 'stopping'))
);

-- The epoch of the leader that started each run.
ALTER TABLE capra.run ADD COLUMN epoch bigint;
