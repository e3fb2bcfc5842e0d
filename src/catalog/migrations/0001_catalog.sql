-- capra control database, version 1: the catalog.
-- Applied by `capra install` in one transaction. Never edit a released
-- migration; add a new numbered file instead.

CREATE SCHEMA IF NOT EXISTS capra;

-- One row: which catalog version this database holds and who it is.
-- `installation` tells capra's own objects in replicated databases apart
-- when several control databases replicate from the same source.
CREATE TABLE capra.meta (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version      integer NOT NULL,
    installation text NOT NULL,
    installed_at timestamptz NOT NULL DEFAULT now(),
    upgraded_at  timestamptz
);

-- Runtime settings (`capra show` / `capra set`).
CREATE TABLE capra.config (
    name    text PRIMARY KEY,
    setting text NOT NULL,
    defval  text NOT NULL,
    about   text NOT NULL
);

-- Object names double as identifiers in messages and scripts, so they are
-- kept simple, as Bucardo does: the CHECKs below repeat the CLI's rule.

CREATE TABLE capra.db (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    dbname    text,
    host      text,
    port      integer CHECK (port BETWEEN 1 AND 65535),
    dbuser    text,
    dbpass    text,
    conn      text NOT NULL DEFAULT '',
    service   text,
    dbtype    text NOT NULL DEFAULT 'postgres' CHECK (dbtype IN ('postgres')),
    status    text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive', 'stalled')),
    makedelta boolean NOT NULL DEFAULT false,
    server_side_prepares boolean NOT NULL DEFAULT true,
    cdate     timestamptz NOT NULL DEFAULT now()
);

-- created_for: the sync whose `dbs=` list created this group; removed with
-- that sync when nothing else uses it.
CREATE TABLE capra.dbgroup (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    created_for text,
    cdate timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE capra.dbmap (
    dbgroup  text NOT NULL REFERENCES capra.dbgroup (name) ON DELETE CASCADE,
    db       text NOT NULL REFERENCES capra.db (name),
    role     text NOT NULL DEFAULT 'target' CHECK (role IN ('source', 'target', 'fullcopy')),
    priority integer NOT NULL DEFAULT 0,
    position integer NOT NULL,
    PRIMARY KEY (dbgroup, db)
);

-- A table or sequence, as found in the database it was added from.
-- pkey/pkeytype are the replication key: the primary key, or the unique key
-- chosen when there is none (keykind says which).
CREATE TABLE capra.relation (
    id          serial PRIMARY KEY,
    db          text NOT NULL REFERENCES capra.db (name),
    schemaname  text NOT NULL,
    relname     text NOT NULL,
    reltype     text NOT NULL CHECK (reltype IN ('table', 'sequence')),
    pkey        text[] NOT NULL DEFAULT '{}',
    pkeytype    text[] NOT NULL DEFAULT '{}',
    keykind     text CHECK (keykind IN ('primary', 'unique')),
    autokick    boolean,
    rebuild_index smallint CHECK (rebuild_index IN (0, 1)),
    analyze_after_copy boolean NOT NULL DEFAULT true,
    vacuum_after_copy  boolean NOT NULL DEFAULT true,
    ghost       boolean NOT NULL DEFAULT false,
    conflict_strategy text,
    strict_checking   boolean NOT NULL DEFAULT true,
    makedelta   text,
    cdate       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (db, schemaname, relname)
);

CREATE TABLE capra.relgroup (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    created_for text,
    cdate timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE capra.relgroup_member (
    relgroup text NOT NULL REFERENCES capra.relgroup (name) ON DELETE CASCADE,
    relation integer NOT NULL REFERENCES capra.relation (id) ON DELETE CASCADE,
    priority integer NOT NULL DEFAULT 0,
    PRIMARY KEY (relgroup, relation)
);

CREATE TABLE capra.sync (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$')
                CHECK (lower(name) NOT IN ('pushdelta', 'fullcopy', 'swap', 'sync', 'all')),
    relgroup    text NOT NULL REFERENCES capra.relgroup (name),
    dbgroup     text NOT NULL REFERENCES capra.dbgroup (name),
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    autokick    boolean NOT NULL DEFAULT true,
    onetimecopy smallint NOT NULL DEFAULT 0 CHECK (onetimecopy IN (0, 1, 2)),
    conflict_strategy text,
    schedule    text,
    checktime   interval,
    stayalive   boolean NOT NULL DEFAULT true,
    kidsalive   boolean NOT NULL DEFAULT true,
    rebuild_index smallint NOT NULL DEFAULT 0 CHECK (rebuild_index IN (0, 1)),
    analyze_after_copy boolean NOT NULL DEFAULT true,
    vacuum_after_copy  boolean NOT NULL DEFAULT false,
    makedelta   boolean NOT NULL DEFAULT false,
    deletemethod text NOT NULL DEFAULT 'truncate'
                CHECK (deletemethod IN ('delete', 'truncate', 'truncate_cascade')),
    isolation_level text CHECK (isolation_level IN ('repeatable read', 'serializable')),
    overdue     interval NOT NULL DEFAULT '0',
    expired     interval NOT NULL DEFAULT '0',
    lifetime    interval,
    maxkicks    integer NOT NULL DEFAULT 0,
    priority    integer NOT NULL DEFAULT 0,
    strict_checking boolean NOT NULL DEFAULT true,
    synctype    text,
    cdate       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE capra.customcode (
    name text PRIMARY KEY CHECK (name ~ '^[A-Za-z][A-Za-z0-9_]{0,62}$'),
    whenrun  text NOT NULL CHECK (whenrun IN ('before_sync', 'after_sync', 'before_txn',
                 'after_txn', 'before_check_rows', 'after_table_sync', 'conflict', 'exception')),
    src_code text NOT NULL,
    src_file text NOT NULL,
    about    text NOT NULL DEFAULT '',
    priority integer NOT NULL DEFAULT 0,
    status   text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'inactive')),
    cdate    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE capra.customcode_map (
    code     text NOT NULL REFERENCES capra.customcode (name) ON DELETE CASCADE,
    sync     text REFERENCES capra.sync (name) ON DELETE CASCADE,
    relation integer REFERENCES capra.relation (id) ON DELETE CASCADE,
    priority integer NOT NULL DEFAULT 0,
    CHECK ((sync IS NULL) <> (relation IS NULL)),
    UNIQUE (code, sync, relation)
);
