-- wrk script: POST pre-signed Clerk webhooks, each at most once per run.
-- Usage: wrk ... -s bench/webhook.lua URL -- REQUESTS_FILE THREADS
-- REQUESTS_FILE has one request a line: svix_id, svix_timestamp, svix_signature and body,
-- separated by tabs, written by bench/wrk.py right before the run (Svix timestamps must be
-- within 5 minutes). Thread k of THREADS sends lines k, k + THREADS, ...: the ingress queues an
-- svix id once, so no two requests of a run share one (after the last line a thread starts
-- over, and the harness checks that no run got that far).

local requests = {}
local position = 0
local threads_set_up = 0

function setup(thread)
  thread:set("index", threads_set_up)
  threads_set_up = threads_set_up + 1
end

function init(args)
  local threads = tonumber(args[2]) or 1
  local line_number = 0
  for line in io.lines(args[1]) do
    if line_number % threads == (index or 0) then
      local id, timestamp, signature, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
      requests[#requests + 1] = wrk.format("POST", "/webhook/clerk", {
        ["svix-id"] = id,
        ["svix-timestamp"] = timestamp,
        ["svix-signature"] = signature,
        ["Content-Type"] = "application/json",
      }, body)
    end
    line_number = line_number + 1
  end
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
