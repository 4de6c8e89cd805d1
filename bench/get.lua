-- wrk script for plain GET runs: prints one machine-readable summary line for bench/run.py.

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH {"requests": %d, "duration_us": %d, "bytes": %d, "latency_mean_us": %f, '
            .. '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, '
            .. '"bad_status": %d}\n',
        summary.requests, summary.duration, summary.bytes, latency.mean,
        e.connect, e.read, e.write, e.status, e.timeout, 0))
end
