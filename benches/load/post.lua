-- wrk script for the load benchmark (copied from shared/bench, plus done()).
-- POST of a ~330-byte template send with a bearer token.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer EAAGm0PX4ZCpsBAKZCZAexampletokenexampletokenexampletokenexampletokenexampletoken"
wrk.body = '{"messaging_product":"whatsapp","recipient_type":"individual","to":"15551234567","type":"template","template":{"name":"order_update","language":{"code":"en_US"},"components":[{"type":"body","parameters":[{"type":"text","text":"A-1029384"},{"type":"text","text":"tomorrow between 9 and 11"}]}]}}'

-- Machine-readable summary for run.sh: percentiles in microseconds
-- (wrk's --latency table stops at 99%), and the error counters.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WAB_LAT_US p50=%d p99=%d p999=%d max=%d\n",
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
  io.write(string.format("WAB_SUMMARY requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout))
end
