-- Posts pre-signed events, each once: the lines of WRK_REQUESTS ("<Stripe-Signature>\t<body>")
-- are dealt round-robin to the threads. Statuses are counted; the ids of first-time 2xx answers
-- ("duplicate":false) go to WRK_OUT.acked, the summary to WRK_OUT as JSON.
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  table.insert(threads, thread)
  counter = counter + 1
end

function init(args)
  local path, nthreads = os.getenv("WRK_PATH"), tonumber(os.getenv("WRK_THREADS"))
  local headers = { ["Content-Type"] = "application/json" }
  requests, acked, statuses, wrapped, nextreq = {}, {}, {}, 0, 1
  local n = 0
  for line in io.lines(os.getenv("WRK_REQUESTS")) do
    if n % nthreads == tid then
      local tab = line:find("\t", 1, true)
      headers["Stripe-Signature"] = line:sub(1, tab - 1)
      requests[#requests + 1] = wrk.format("POST", path, headers, line:sub(tab + 1))
    end
    n = n + 1
  end
end

function request()
  local r = requests[nextreq]
  nextreq = nextreq + 1
  if nextreq > #requests then
    nextreq, wrapped = 1, wrapped + 1
  end
  return r
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status >= 200 and status < 300 and body:find('"duplicate":false', 1, true) then
    acked[#acked + 1] = body:match('"id":"([^"]+)"')
  end
end

function done(summary, latency, requests)
  local out = os.getenv("WRK_OUT")
  local ids = io.open(out .. ".acked", "w")
  local counts, wraps = {}, 0
  for _, thread in ipairs(threads) do
    for _, id in ipairs(thread:get("acked")) do ids:write(id, "\n") end
    for status, count in pairs(thread:get("statuses")) do counts[status] = (counts[status] or 0) + count end
    wraps = wraps + thread:get("wrapped")
  end
  ids:close()
  local parts = {}
  for status, count in pairs(counts) do parts[#parts + 1] = string.format('"%d": %d', status, count) end
  local e = summary.errors
  local f = io.open(out, "w")
  f:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "wrapped": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}',
    summary.requests, summary.duration, summary.bytes, wraps, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
  f:close()
end
