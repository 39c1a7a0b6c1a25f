#!/usr/bin/env python3
# HTTP/2 slow readers (issue 25 item 2): C h2c client connections, each opening S streams
# (GET, answered by the fake upstream with MB megabytes) with a huge window (INITIAL_WINDOW_SIZE
# and the connection window at 2^31-1), then never reading the socket. Reports the gateway's
# RSS (VmRSS, VmHWM), its open descriptors (/proc/PID/fd), the upstream connections the fake
# accepted, and whether a normal send on a fresh HTTP/1.1 connection still gets its answer.
#
# Starts its own fake upstream (threads, HTTP/1.1 keep-alive, answers GET with MB MB and
# POST with a small JSON) and its own gateway (`BIN`, default target/release/wa-breaker)
# with `ulimit -n` 2048, on loopback only. Bounded: about HOLD + 5 s.
# Usage: h2-slow-readers.py ENGINE(relay|hyper) C S [MB] [HOLD_S] [BIN]
import json, os, resource, socket, struct, subprocess, sys, tempfile, threading, time

engine, C, S = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
MB = int(sys.argv[4]) if len(sys.argv) > 4 else 50
HOLD = float(sys.argv[5]) if len(sys.argv) > 5 else 5.0
BIN = sys.argv[6] if len(sys.argv) > 6 else "target/release/wa-breaker"
PHONE, WABA = "106540352242922", "102290129340398"

# --- fake upstream -------------------------------------------------------------------
accepted = 0
lock = threading.Lock()
CHUNK = b"x" * (1 << 20)

def serve(c):
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.split(b"\r\n")
            n = 0
            for l in lines[1:]:
                k, _, v = l.partition(b":")
                if k.strip().lower() == b"content-length":
                    n = int(v)
            while len(buf) < n:
                buf += c.recv(65536)
            buf = buf[n:]
            if lines[0].startswith(b"GET"):
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
                          b"content-length: %d\r\n\r\n" % (MB << 20))
                for _ in range(MB):
                    c.sendall(CHUNK)
            else:
                body = b'{"messaging_product":"whatsapp","messages":[{"id":"wamid.x"}]}'
                c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    finally:
        c.close()

up = socket.socket()
up.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
up.bind(("127.0.0.1", 0))
up.listen(4096)

def accept_loop():
    global accepted
    while True:
        c, _ = up.accept()
        with lock:
            accepted += 1
        threading.Thread(target=serve, args=(c,), daemon=True).start()

threading.Thread(target=accept_loop, daemon=True).start()

# --- gateway -----------------------------------------------------------------------
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

listen, admin = free_port(), free_port()
d = tempfile.mkdtemp()
cfg = f"""fast_path = {'true' if engine == 'relay' else 'false'}
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
state_dir = "{d}"
upstream = "http://127.0.0.1:{up.getsockname()[1]}"
admin_token = "bench-admin-token-0123456789"
request_timeout = "30s"
# Hundreds of streams to one phone number: the pace (enforce by default, 80/s) must not bind.
[shaping]
throughput = 100000
[[accounts]]
waba_id = "{WABA}"
phone_number_ids = ["{PHONE}"]
"""
open(f"{d}/config.toml", "w").write(cfg)
log = open(f"{d}/gateway.log", "w")
gw = subprocess.Popen([BIN, "--config", f"{d}/config.toml"], stdout=log, stderr=log,
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (2048, 2048)))
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", listen)).close(); break
    except OSError:
        time.sleep(0.05)
pid = gw.pid

def status(key):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(key):
            return int(l.split()[1])

def fds():
    return len(os.listdir(f"/proc/{pid}/fd"))

def frame(kind, flags, stream, payload):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload

path = f"/v21.0/{PHONE}/whatsapp_business_profile".encode()
block = bytes([0x82, 0x86, 0x44, len(path)]) + path + bytes([0x41, 2]) + b"gw"
settings = struct.pack(">HI", 0x4, 0x7FFFFFFF)  # INITIAL_WINDOW_SIZE
hello = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, settings)
         + frame(8, 0, 0, struct.pack(">I", 0x7FFFFFFF - 65535)))

base_rss, base_fds = status("VmRSS"), fds()
clients = []
for _ in range(C):
    s = socket.create_connection(("127.0.0.1", listen))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    out = hello + b"".join(frame(1, 0x5, 2 * i + 1, block) for i in range(S))
    s.sendall(out)
    clients.append(s)
time.sleep(HOLD)
held = {"rss_kb": status("VmRSS"), "hwm_kb": status("VmHWM"), "fds": fds()}
with lock:
    ups = accepted
# A normal send on a fresh HTTP/1.1 connection meanwhile.
t0 = time.time()
try:
    s = socket.create_connection(("127.0.0.1", listen), timeout=10)
    s.sendall(f"POST /v21.0/{PHONE}/messages HTTP/1.1\r\nHost: gw\r\ncontent-type: application/json\r\n"
              f"content-length: 2\r\n\r\n{{}}".encode())
    got = s.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
    s.close()
except OSError as e:
    got = f"error: {e}"
send_ms = round((time.time() - t0) * 1000)
print(json.dumps({"engine": engine, "conns": C, "streams": S, "mb": MB,
                  "rss_kb_before": base_rss, "fds_before": base_fds, **held,
                  "upstream_conns": ups, "send": got, "send_ms": send_ms,
                  "too_many_open_files": "Too many open files" in open(f"{d}/gateway.log").read()}))
for s in clients:
    s.close()
gw.terminate()
gw.wait(timeout=15)
