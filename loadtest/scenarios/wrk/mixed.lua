-- The mixed support workload (wrk script). Of all requests: 90% look up one customer,
-- 8% read a list page of 50, 2% save (PUT) a record loaded earlier, with its tokens as
-- loaded; 5% are lookups that cite a valid ticket (the agent's own, for that customer).
-- Every request names its agent with the trusted header.
-- args: customers, tickets file ("agent ticket customer" lines), random seed
local customers = 10000
local tickets = {}
local saved, nsaved, keep = {}, 0, 200
local ticket_share = 0.05 / 0.90 -- of lookups, so that 5% of all requests cite a ticket

function init(args)
  customers = tonumber(args[1])
  for line in io.lines(args[2]) do
    local agent, ticket, customer = line:match("^(%S+) (%S+) (%S+)$")
    if agent then tickets[#tickets + 1] = { agent, ticket, customer } end
  end
  math.randomseed(tonumber(args[3]) or 1)
end

function request()
  local r = math.random()
  local agent = "agent-" .. math.random(20)
  if r < 0.90 then
    if #tickets > 0 and math.random() < ticket_share then
      local t = tickets[math.random(#tickets)]
      return wrk.format("GET", "/customers/" .. t[3],
        { ["X-Authenticated-User"] = t[1], ["X-Ticket-Id"] = t[2] })
    end
    return wrk.format("GET", "/customers/" .. math.random(customers),
      { ["X-Authenticated-User"] = agent })
  elseif r < 0.98 or nsaved == 0 then
    local page = math.random(0, math.floor(customers / 50) - 1)
    return wrk.format("GET", "/customers?limit=50&offset=" .. (page * 50),
      { ["X-Authenticated-User"] = agent })
  end
  local body = saved[math.random(nsaved)]
  local id = body:match('^{"id":(%d+)')
  return wrk.format("PUT", "/customers/" .. id,
    { ["X-Authenticated-User"] = agent, ["Content-Type"] = "application/json" }, body)
end

function response(status, headers, body)
  -- keep some single records (they start with their id) for later saves
  if status == 200 and body:sub(1, 6) == '{"id":' then
    if nsaved < keep then
      nsaved = nsaved + 1
      saved[nsaved] = body
    else
      saved[math.random(keep)] = body
    end
  end
end
