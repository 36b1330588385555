-- wrk script for scripts/bench-auth.sh: calls the gateway as a client would.
--
--   wrk -t2 -c32 -d15s -s scripts/bench/auth.lua http://127.0.0.1:GATEWAY -- MODE FILE
--
-- MODE:  login -> POST /api/v1/auth/login {"email","password"} for a random line
--                 "<email> <password>" of FILE (seeded users; every login succeeds)
--        guest -> GET /api/v1/cart with X-Session-Token: <a random line of FILE>
--        user  -> GET /api/v1/cart with Authorization: Bearer <a random line of FILE>
--
-- Every request is pre-formatted in init() so wrk spends as little CPU as possible per
-- request (it shares the machine with what it measures). response() counts the statuses
-- (wrk itself only counts those >= 400, all together), and done() prints one
-- machine-readable "BENCH ..." line that the shell script parses; latencies in µs.

local requests = {}
local n = 0
local threads = {}

-- Per-thread status counters (globals of each thread's Lua state, read in done()).
s2xx, s401, s429, s503, sother = 0, 0, 0, 0, 0

function setup(thread)
    thread_no = (thread_no or 0) + 1
    thread:set("thread_no", thread_no)
    table.insert(threads, thread)
end

function init(args)
    local mode, path = args[1], args[2]
    assert(mode == "login" or mode == "guest" or mode == "user", "usage: -- login|guest|user FILE")
    assert(path, "usage: -- login|guest|user FILE")
    for line in io.lines(path) do
        if mode == "login" then
            local email, password = line:match("^(%S+)%s+(%S+)")
            if email then
                n = n + 1
                requests[n] = wrk.format("POST", "/api/v1/auth/login",
                    { ["content-type"] = "application/json" },
                    '{"email":"' .. email .. '","password":"' .. password .. '"}')
            end
        elseif line:match("%S") then
            local h
            if mode == "guest" then
                h = { ["x-session-token"] = line }
            else
                h = { ["authorization"] = "Bearer " .. line }
            end
            n = n + 1
            requests[n] = wrk.format("GET", "/api/v1/cart", h)
        end
    end
    assert(n > 0, "nothing usable in " .. path)
    math.randomseed(os.time() * 1000 + (thread_no or 0) * 7919)
    for _ = 1, 10 do math.random() end
end

function request()
    return requests[math.random(n)]
end

function response(status, headers, body)
    if status >= 200 and status < 300 then
        s2xx = s2xx + 1
    elseif status == 401 then
        s401 = s401 + 1
    elseif status == 429 then
        s429 = s429 + 1
    elseif status == 503 then
        s503 = s503 + 1
    else
        sother = sother + 1
    end
end

function done(summary, latency, requests_)
    local c2, c401, c429, c503, co = 0, 0, 0, 0, 0
    for _, t in ipairs(threads) do
        c2 = c2 + (t:get("s2xx") or 0)
        c401 = c401 + (t:get("s401") or 0)
        c429 = c429 + (t:get("s429") or 0)
        c503 = c503 + (t:get("s503") or 0)
        co = co + (t:get("sother") or 0)
    end
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d status_errors=%d connect_errors=%d " ..
        "read_errors=%d write_errors=%d timeouts=%d mean_us=%.1f stdev_us=%.1f " ..
        "p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
        "s2xx=%d s401=%d s429=%d s503=%d sother=%d\n",
        summary.requests, summary.duration, e.status, e.connect, e.read, e.write,
        e.timeout, latency.mean, latency.stdev, latency:percentile(50),
        latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
        latency.max, c2, c401, c429, c503, co))
end
