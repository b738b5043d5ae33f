-- wrk script: POST pre-signed Clerk webhooks, cycling through them.
-- Usage: wrk ... -s bench/webhook.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE is a Lua chunk returning { {svix_id, svix_timestamp, svix_signature, body}, ... }
-- written by bench/wrk.py right before the run (Svix timestamps must be within 5 minutes).

local requests = {}
local position = 0
local threads_set_up = 0

function setup(thread)
  threads_set_up = threads_set_up + 1
  thread:set("offset", threads_set_up * 7919)
end

function init(args)
  local signed = dofile(args[1])
  for i, r in ipairs(signed) do
    requests[i] = wrk.format("POST", "/webhook/clerk", {
      ["svix-id"] = r[1],
      ["svix-timestamp"] = r[2],
      ["svix-signature"] = r[3],
      ["Content-Type"] = "application/json",
    }, r[4])
  end
  -- Threads start at different places in the list.
  position = (offset or 0) % #requests
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function done(summary, latency, _requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,' ..
    '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout,
    latency.mean, latency.stdev, latency.min, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
