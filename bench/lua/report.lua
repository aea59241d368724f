-- Shared by every workload: print wrk's totals as one JSON line the driver parses.
-- summary.requests counts completed responses; errors.status counts those >= 400.
function done(summary, latency, requests)
  io.write(string.format(
    '\nBENCH_JSON {"requests": %d, "duration_us": %d, "non_2xx_3xx": %d,' ..
    ' "connect": %d, "read": %d, "write": %d, "timeout": %d,' ..
    ' "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout, latency:percentile(50), latency:percentile(99)))
end
