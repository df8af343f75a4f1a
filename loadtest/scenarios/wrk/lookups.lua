-- Lookups of random customers (wrk script); every Nth single-record response body is
-- appended to a file, one per line, to be checked after the run.
-- args: customers, sample file ("-": none), N, random seed
local customers, every, out, n = 10000, 20, nil, 0

function init(args)
  customers = tonumber(args[1])
  if args[2] ~= "-" then
    out = io.open(args[2], "a")
    out:setvbuf("line")
  end
  every = tonumber(args[3])
  math.randomseed(tonumber(args[4]) or 1)
end

function request()
  return wrk.format("GET", "/customers/" .. math.random(customers))
end

function response(status, headers, body)
  n = n + 1
  if out and status == 200 and n % every == 0 then out:write(body, "\n") end
end
