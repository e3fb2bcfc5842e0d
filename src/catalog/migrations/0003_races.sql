-- capra control database, version 3: catalog edits that never race a run.

-- Every request for a onetimecopy bumps a generation; a run clears the flag
-- only if the generation it served is still the current one, so a request
-- made while that run was in flight is kept for the next run.
ALTER TABLE capra.sync ADD COLUMN onetimecopy_gen bigint NOT NULL DEFAULT 0;

CREATE FUNCTION capra.sync_onetimecopy_gen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.onetimecopy <> 0 THEN
        NEW.onetimecopy_gen := OLD.onetimecopy_gen + 1;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sync_onetimecopy_gen BEFORE UPDATE OF onetimecopy ON capra.sync
    FOR EACH ROW EXECUTE PROCEDURE capra.sync_onetimecopy_gen();

-- Targets a run skipped (inactive) while the sync's position moved on: the
-- next run that includes them gives them a full copy, so a target switched
-- off and on again catches up instead of staying behind for good.
CREATE TABLE capra.target_behind (
    sync  text NOT NULL REFERENCES capra.sync (name) ON DELETE CASCADE,
    db    text NOT NULL,
    since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sync, db)
);
