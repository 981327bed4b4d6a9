-- wrk script for sigma's benchmarks (bench/run).
--
--   wrk ... -s bench/wrk/pipeline.lua URL -- DEPTH
--
-- DEPTH 1 (default): plain keep-alive, wrk's static request (no Lua per
-- request). DEPTH N > 1: N requests are written back to back and wrk waits
-- for all N responses before sending the next batch (HTTP/1.1 pipelining);
-- wrk counts every response in Requests/sec, and the latency it records is
-- the batch's.
--
-- At the end it prints one line, `wrk-json {...}`, with the numbers
-- bench/run reads (latency in microseconds).

local depth = 1

function init(args)
  depth = tonumber(args[1] or "1") or 1
  if depth > 1 then
    local r = {}
    for i = 1, depth do
      r[i] = wrk.format(nil)
    end
    local batch = table.concat(r)
    -- Defining `request` makes wrk ask Lua once per batch of DEPTH.
    request = function()
      return batch
    end
  end
end

-- The latency distribution as (percentile, µs) points, so that bench/run
-- can take the slices of one measurement together.
local function quantiles(latency)
  local grid = {}
  for p = 1, 99 do grid[#grid + 1] = p end
  grid[#grid + 1] = 99.5
  grid[#grid + 1] = 99.9
  grid[#grid + 1] = 99.99
  local pts = { string.format("[0,%.1f]", latency.min) }
  for _, p in ipairs(grid) do
    pts[#pts + 1] = string.format("[%g,%.1f]", p, latency:percentile(p))
  end
  pts[#pts + 1] = string.format("[100,%.1f]", latency.max)
  return "[" .. table.concat(pts, ",") .. "]"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'wrk-json {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"p50_us":%.1f,"p90_us":%.1f,"p99_us":%.1f,"p999_us":%.1f,"max_us":%.1f,"mean_us":%.1f,' ..
    '"quantiles_us":%s}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, quantiles(latency)))
end
