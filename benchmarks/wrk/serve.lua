-- wrk script of `python -m benchmarks.serve` (wrk 4.1; Debian has no wrk2).
-- BENCH_MODE: lookup | decide | ceiling | collect. BENCH_IDENTITIES: a file of known identities,
-- one "NAMESPACE:VALUE" a line. BENCH_KEY: the API key. BENCH_RATE > 0: a fixed rate, requests/s
-- over all BENCH_THREADS threads: each thread sends on its own schedule (start + n / rate), with
-- delay() waiting for the next slot (wrk's timers have 1 ms steps). A slot that finds every
-- connection busy is sent late and counted in "late" (wrk measures latency from the send, so a
-- late send would hide queueing: wrk2's coordinated omission; the count says whether it happened).
-- done() prints one line "BENCH_JSON {...}".
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end

local mode = os.getenv("BENCH_MODE") or "lookup"
local key = os.getenv("BENCH_KEY") or ""
local rate = tonumber(os.getenv("BENCH_RATE") or "0")
local threads_n = tonumber(os.getenv("BENCH_THREADS") or "1")
local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key }

local requests_pool = {}
local pool_n = 0
tid = 0 -- set per thread by setup()
local counter = 0
local names = { "yoga", "running", "fitness-shirts", "home", "cart", "sale" }

local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  math.randomseed(os.time() * 100 + tid)
  if mode == "collect" then return end
  local path, body
  if mode == "decide" then path = "/v1/decisions" else path = "/v1/profiles/lookup" end
  if mode == "ceiling" then path = "/bench/constant" end
  for line in io.lines(os.getenv("BENCH_IDENTITIES")) do
    if mode == "decide" then
      body = '{"identity":"' .. line .. '","placement":"home-hero"}'
    else
      body = '{"identity":"' .. line .. '"}'
    end
    pool_n = pool_n + 1
    requests_pool[pool_n] = wrk.format("POST", path, headers, body)
  end
end

function request()
  if mode == "collect" then
    counter = counter + 1
    local body = string.format(
      '{"_id":"bench-%d-%d-%d","eventType":"web.webpagedetails.pageViews","timestamp":"%s",' ..
      '"identityMap":{"ECID":[{"id":"bench-ecid-%d"}]},"web":{"webPageDetails":{"name":"%s"}}}',
      tid, os.time(), counter, os.date("!%Y-%m-%dT%H:%M:%SZ"), math.random(5000),
      names[math.random(#names)])
    return wrk.format("POST", "/v1/collect/web", headers, body)
  end
  return requests_pool[math.random(pool_n)]
end

late = 0
sent = 0
if rate > 0 then
  local interval = 1000.0 * threads_n / rate
  local start = nil
  function delay()
    local now = now_ms()
    if start == nil then start = now end
    local slot = start + sent * interval
    sent = sent + 1
    local wait = slot - now
    if wait < -2 then late = late + 1 end
    if wait <= 0 then return 0 end
    return math.floor(wait)
  end
end

function done(summary, latency, requests)
  local late_all = 0
  for _, t in ipairs(threads) do late_all = late_all + (t:get("late") or 0) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"seconds":%.3f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,' ..
    '"max_ms":%.3f,"non_2xx":%d,"socket_errors":%d,"late_sends":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(90) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, late_all))
end
