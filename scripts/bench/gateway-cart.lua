-- wrk script for scripts/bench-cleanup.sh: a steady shopper workload through the gateway.
--
--   wrk -t2 -c16 -d60s --latency -s scripts/bench/gateway-cart.lua http://127.0.0.1:PORT -- TOKENS THINK_MS
--
-- TOKENS:   a file of guest session tokens, one a line (sessions made through the gateway).
-- THINK_MS: each connection waits this long after an answer before its next request, so
--           the load is a steady rate (about connections * 1000 / THINK_MS requests/s)
--           instead of whatever the machine can take: the worker's effect shows up as
--           latency, not as lost throughput.
--
-- 4 of 5 requests read the cart (GET /api/v1/cart), 1 of 5 adds an item
-- (POST /api/v1/cart/items, one of 20 products). done() prints one "BENCH ..." line;
-- latencies in µs.

local tokens = {}
local think = 20

function setup(thread)
    thread_no = (thread_no or 0) + 1
    thread:set("thread_no", thread_no)
end

function init(args)
    for line in io.lines(args[1]) do
        if #line > 0 then
            tokens[#tokens + 1] = line
        end
    end
    assert(#tokens > 0, "no session tokens in " .. args[1])
    think = tonumber(args[2] or "20")
    math.randomseed(os.time() * 1000 + (thread_no or 0))
end

function delay()
    return think
end

function request()
    local token = tokens[math.random(#tokens)]
    if math.random(5) == 1 then
        local body = string.format('{"product_id":"sku-%d","quantity":1}', math.random(20))
        return wrk.format("POST", "/api/v1/cart/items", {
            ["X-Session-Token"] = token,
            ["Content-Type"] = "application/json",
        }, body)
    end
    return wrk.format("GET", "/api/v1/cart", { ["X-Session-Token"] = token })
end

function done(summary, latency, requests)
    local errors = summary.errors.connect + summary.errors.read + summary.errors.write
        + summary.errors.timeout + summary.errors.status
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p50=%d p90=%d p99=%d p999=%d max=%d errors=%d non2xx=%d\n",
        summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9), latency.max, errors, summary.errors.status))
end
