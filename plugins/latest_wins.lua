-- Conflict hook: the database whose change to this row came last wins.
-- Ties go to the database whose name sorts first, so every node decides
-- the same way.
return function(ctx)
  local winner, best = nil, nil
  for db, at in pairs(ctx.changed_at) do
    if best == nil or at > best or (at == best and db < winner) then
      winner, best = db, at
    end
  end
  if winner then
    ctx.log(string.format("conflict on %s: %s wins (changed at %.3f)", ctx.table or "?", winner, best))
  end
  return winner
end
