-- after_txn hook: one log line per run, naming the databases involved.
return function(ctx)
  local names = {}
  for _, db in ipairs(ctx.dbs) do
    names[#names + 1] = db.name .. ":" .. db.role
  end
  ctx.log(string.format("run %s of %s done (%s)", tostring(ctx.run_id), ctx.sync, table.concat(names, " ")))
  return nil
end
