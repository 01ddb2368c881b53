-- Prepended to every step of the ledger (scripts/*.lua). Stream ids order as (ms, seq) numbers, as
-- producers.contract.entry_order does in Python.
local function older(a, b)
  local am, as = string.match(a, '(%d+)-(%d+)')
  local bm, bs = string.match(b, '(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
