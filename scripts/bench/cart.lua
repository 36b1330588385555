-- wrk script for scripts/bench-cart.sh: calls cart-svc directly, as the gateway would,
-- on a random seeded guest cart per request.
--
--   wrk -t2 -c32 -d15s -s scripts/bench/cart.lua http://127.0.0.1:PORT -- CARTS TOKEN MODE [THREADS]
--
-- CARTS:   a file of "<cart uuid> <64-hex cart token hash>" lines (the seeded carts).
-- TOKEN:   a file whose first line is cart-svc's INTERNAL_TOKEN (kept off the command line).
-- MODE:    read  -> GET /api/v1/cart on a random cart
--          once  -> GET /api/v1/cart on each cart in turn, each wrk thread walking its own
--                   share of the file, so no cart is read twice (until a thread runs out
--                   and starts over)
--          write -> POST /api/v1/cart/items {"product_id":"sku-<1..20>","quantity":1}
--                   on a random cart and product
-- THREADS: wrk's -t, needed by "once" to split the file.
--
-- Every request is pre-formatted in init() so wrk spends as little CPU as possible per
-- request (it shares the machine with what it measures). done() prints one
-- machine-readable "BENCH ..." line that the shell script parses; latencies in µs.

local requests = {}
local n = 0
local next_i = 0
local sequential = false
local products = 20

function setup(thread)
    -- Number the threads (each has its own Lua state): a distinct random seed each,
    -- and in "once" mode a share of the carts each.
    thread_no = (thread_no or 0) + 1
    thread:set("thread_no", thread_no)
end

local function read_first_line(path)
    local f = assert(io.open(path, "r"), "cannot open " .. path)
    local line = f:read("*l")
    f:close()
    return line
end

function init(args)
    local carts_path, token_path, mode = args[1], args[2], args[3] or "read"
    local threads = tonumber(args[4] or "1")
    assert(carts_path and token_path, "usage: -- CARTS_FILE TOKEN_FILE read|once|write [THREADS]")
    assert(mode == "read" or mode == "once" or mode == "write", "mode must be read, once or write")
    sequential = mode == "once"
    local token = read_first_line(token_path)
    local lineno = 0
    for line in io.lines(carts_path) do
        local id, hash = line:match("^(%S+)%s+(%S+)")
        lineno = lineno + 1
        local mine = not sequential or (lineno % threads) == ((thread_no or 1) - 1)
        if id and mine then
            local h = {
                ["x-internal-token"] = token,
                ["x-identity-kind"] = "guest",
                ["x-identity-cart-id"] = id,
                ["x-identity-cart-token-hash"] = hash,
            }
            if mode == "read" or mode == "once" then
                n = n + 1
                requests[n] = wrk.format("GET", "/api/v1/cart", h)
            else
                h["content-type"] = "application/json"
                for p = 1, products do
                    n = n + 1
                    local body = '{"product_id":"sku-' .. p .. '","quantity":1}'
                    requests[n] = wrk.format("POST", "/api/v1/cart/items", h, body)
                end
            end
        end
    end
    assert(n > 0, "no carts in " .. carts_path)
    math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
    for _ = 1, 10 do math.random() end
end

function request()
    if sequential then
        next_i = next_i % n + 1
        return requests[next_i]
    end
    return requests[math.random(n)]
end

function done(summary, latency, requests_)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d status_errors=%d connect_errors=%d " ..
        "read_errors=%d write_errors=%d timeouts=%d mean_us=%.1f stdev_us=%.1f " ..
        "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d\n",
        summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
        e.timeout, latency.mean, latency.stdev, latency:percentile(50),
        latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        latency.max))
end
