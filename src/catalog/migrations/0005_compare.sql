-- capra control database, version 5: the last compare of each sync
-- (`capra compare`, or the daemon on compare_schedule). `status SYNC`
-- shows it; the daemon mails when one found differences.
CREATE TABLE capra.compare_result (
    sync        text PRIMARY KEY,
    ran_at      timestamptz NOT NULL DEFAULT now(),
    truth       text NOT NULL,
    tables      integer NOT NULL,
    dbs         integer NOT NULL,
    differences integer NOT NULL,
    in_flight   integer NOT NULL,
    repaired    integer,
    report      jsonb NOT NULL
);
