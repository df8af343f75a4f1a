-- Each request a different customer (wrk script): ids first, first + 1, ... wrapping
-- after count ids.
-- args: first id, count
local first, count, n = 1, 100000, 0

function init(args)
  first = tonumber(args[1])
  count = tonumber(args[2])
end

function request()
  local id = first + (n % count)
  n = n + 1
  return wrk.format("GET", "/customers/" .. id)
end
