-- wrk request generation for the benchmark. The path comes from BENCH_PATH ({n} is replaced by
-- a number that varies per request). With DELAY_MS > 0 each connection waits that long between
-- requests, for a roughly fixed rate of connections * 1000 / (DELAY_MS + latency); with 0, wrk
-- runs at saturation.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "0")
local path = os.getenv("BENCH_PATH") or "/"
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", (path:gsub("{n}", tostring(n % 1000))))
end
if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end
