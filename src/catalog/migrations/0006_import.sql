-- capra control database, version 6: syncs taken over from Bucardo
-- (`capra import bucardo`). `status` shows where such a sync came from
-- until its first good run; a second import finds its row and changes
-- nothing.
CREATE TABLE capra.imported (
    sync        text PRIMARY KEY REFERENCES capra.sync (name) ON DELETE CASCADE,
    origin      text NOT NULL,
    -- Bucardo's control database, as a connection summary (no password).
    control     text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now(),
    -- When the changes Bucardo had not delivered were handed to capra and
    -- Bucardo's sync was set inactive; NULL: an import stopped before, and
    -- the next one finishes the takeover.
    taken_over  timestamptz,
    -- Tables whose first run copies them whole (capra's key differs from
    -- the one Bucardo captured).
    copied      text[] NOT NULL DEFAULT '{}'
);
