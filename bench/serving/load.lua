-- Closed-loop load for bench/serving: cycles through the request bodies in a file (one
-- JSON body per line) and prints one JSON summary line.
local bodies = {}
local path = "/"
local counter = 0

function init(args)
  path = args[1]
  for line in io.lines(args[2]) do
    bodies[#bodies + 1] = line
  end
  if args[3] and args[3] ~= "" then
    wrk.headers["Authorization"] = args[3]
  end
  wrk.headers["Content-Type"] = "application/json"
  counter = math.random(#bodies)
end

function request()
  counter = counter % #bodies + 1
  return wrk.format("POST", path, nil, bodies[counter])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
