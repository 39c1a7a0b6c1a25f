#!/usr/bin/env python3
# Per-connection memory of idle keep-alive client connections (issue 12): opens N loopback
# connections to a running gateway on 127.0.0.1:18080, sends one send each (answered
# locally: open the circuit of WABA 102290129340398 first, so no upstream is needed), keeps
# them idle, and reports the gateway's RSS (VmRSS) before, while held, and after closing.
# Bounded: N connections, about N/1000 s. Usage: idle-conn-memory.py GATEWAY_PID N
# (raise `ulimit -n` above N for both processes). Figures: BENCHMARKS.md.
import socket, sys, time, json, urllib.request
pid, n = int(sys.argv[1]), int(sys.argv[2])
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
req = (b"POST /v21.0/106540352242922/messages HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
       b"Content-Length: 2\r\n\r\n{}")
base = rss()
conns = []
for i in range(n):
    s = socket.create_connection(("127.0.0.1", 18080)); s.sendall(req)
    got = b""
    while b"\r\n\r\n" not in got: got += s.recv(65536)
    conns.append(s)
time.sleep(0.5)
held = rss()
for s in conns: s.close()
time.sleep(1.0)
after = rss()
print(json.dumps({"n": n, "rss_kb_before": base, "rss_kb_held": held, "rss_kb_after_close": after,
                  "kb_per_conn": round((held - base) / n, 2)}))
