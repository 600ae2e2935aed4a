-- wrk script for bench/run.py.
--
-- Every request carries a fresh random X-Session-Id, so the proxies hash a new key each
-- time and the ~10 % / ~90 % signal/legacy split is exercised (a constant id would send
-- every request to the same side). done() prints one line, "WRK_JSON {...}", that
-- run.py parses: latencies in microseconds, wrk's error counters ("status" is wrk's
-- "Non-2xx or 3xx responses", i.e. status >= 400).

local threads = {}
local counter = 0

function setup(thread)
   counter = counter + 1
   thread:set("id", counter)
   table.insert(threads, thread)
end

function init(args)
   -- os.time() alone would give every thread of a run the same sequence.
   math.randomseed(os.time() * 1000 + (id or 0) * 7919)
   math.random() -- the first value after seeding is poorly mixed in some Lua builds
end

function request()
   wrk.headers["X-Session-Id"] = string.format(
      "%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
   return wrk.format()
end

function done(summary, latency, requests)
   local e = summary.errors
   local points = {}
   for _, p in ipairs({50, 75, 90, 99, 99.9, 99.99}) do
      table.insert(points, string.format('"%s": %d', tostring(p), latency:percentile(p)))
   end
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"min": %d, "max": %d, "mean": %.1f, "stdev": %.1f, '
         .. '"percentiles": {%s}}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.max, latency.mean, latency.stdev,
      table.concat(points, ", ")))
end
