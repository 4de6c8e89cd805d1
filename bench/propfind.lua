-- wrk script: PROPFIND Depth: 1 with an empty body (allprop). Counts responses whose status is
-- not 207 and prints one machine-readable summary line for bench/run.py.

wrk.method = "PROPFIND"
wrk.body = ""
wrk.headers["Depth"] = "1"

local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    bad = 0
end

function response(status, headers, body)
    if status ~= 207 then
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local total_bad = 0
    for _, thread in ipairs(threads) do
        total_bad = total_bad + (thread:get("bad") or 0)
    end
    local e = summary.errors
    io.write(string.format(
        'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "latency_mean_us": %f, '
            .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
            .. '"bad_status": %d}\n',
        summary.requests, summary.duration, summary.bytes, latency.mean,
        e.connect, e.read, e.write, e.status, e.timeout, total_bad))
end
