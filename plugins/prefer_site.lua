-- Conflict hook: the head-office database wins, unless it deleted the row
-- while another site still has it; then the other site's row is kept.
local HEAD = "test1_master"
return function(ctx)
  if ctx.rows[HEAD] ~= nil then
    return HEAD
  end
  for db, row in pairs(ctx.rows) do
    if row ~= nil then
      return db
    end
  end
  return nil -- everyone deleted it: let conflict_strategy decide
end
