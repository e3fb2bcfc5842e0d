-- Exception hook: when a table's changes break a constraint on some
-- database (a unique index or a CHECK the source does not have), skip that
-- table for this run, so the other tables keep replicating, and send an
-- alert naming the table and the error. Any other error fails the run as
-- usual. The skipped changes are not applied anywhere: fix the data, then
-- run onetimecopy=2 or touch the rows again.
local SKIP = { ["23505"] = "unique violation", ["23514"] = "check violation" }
return function(ctx)
  local what = SKIP[ctx.sqlstate]
  if what == nil then
    return nil
  end
  ctx.email(
    string.format("capra: %s skipped in sync %s (%s)", ctx.table or "?", ctx.sync, what),
    string.format("Run %s could not apply %s: %s\nThe table was skipped in this run.", tostring(ctx.run_id), ctx.table or "?", ctx.error)
  )
  ctx.log(string.format("skipping %s: %s", ctx.table or "?", what))
  return "skip"
end
