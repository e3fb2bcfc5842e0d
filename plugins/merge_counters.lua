-- Conflict hook: merges rows whose counters only grow (page views, stock
-- received, ...). Each counter column keeps the highest value any site
-- has; every other column comes from the site that changed the row last
-- (ties: the name that sorts first). Rows deleted somewhere are left to
-- conflict_strategy.
local COUNTERS = { n = true, views = true }
return function(ctx)
  local latest, at = nil, nil
  for db, t in pairs(ctx.changed_at) do
    if ctx.rows[db] == nil then
      return nil -- a delete is not a counter update: let the strategy decide
    end
    if at == nil or t > at or (t == at and db < latest) then
      latest, at = db, t
    end
  end
  if latest == nil then
    return nil
  end
  local merged = {}
  for col, v in pairs(ctx.rows[latest]) do
    merged[col] = v
  end
  for _, row in pairs(ctx.rows) do
    for col in pairs(COUNTERS) do
      local v = row[col]
      if type(v) == "number" and (merged[col] == nil or v > merged[col]) then
        merged[col] = v
      end
    end
  end
  ctx.log(string.format("merged %s: counters from every site, the rest from %s", ctx.table or "?", latest))
  return { row = merged }
end
