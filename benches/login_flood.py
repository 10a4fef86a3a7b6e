#!/usr/bin/env python3
"""Login flood against chat serve: N concurrent failed logins (distinct usernames), a
legitimate login timed during it (from 127.0.0.2), RSS before / peak / after idle.
usage: login_flood.py BASE PID N (benches/login_flood.sh starts the server)"""
import json, sys, threading, time, urllib.request, urllib.error, collections
base, pid, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def mem(field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
import http.client, urllib.parse
def post_from(src, path, body):
    u = urllib.parse.urlparse(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=120, source_address=(src, 0))
    c.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    r = c.getresponse(); r.read(); c.close()
    return r.status, dict(r.getheaders())
def post(path, body):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers)
    except Exception as e:
        return str(type(e).__name__), {}
post("/v1/users", {"username": "alice", "password": "correct horse battery"})
before = mem("VmRSS")
counts = collections.Counter()
lock = threading.Lock()
barrier = threading.Barrier(n + 1)
def one(i):
    barrier.wait()
    status, _ = post("/v1/sessions", {"username": f"nobody{i}", "password": "wrong guess"})
    with lock:
        counts[status] += 1
threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads: t.start()
barrier.wait()
t0 = time.time()
time.sleep(0.2)
tries = 0
while True:
    tries += 1
    status, headers = post_from("127.0.0.2", "/v1/sessions", {"username": "alice", "password": "correct horse battery"})
    if status == 200 or tries > 60: break
    time.sleep(float(headers.get("Retry-After", headers.get("retry-after", "1"))))
legit = time.time() - t0 - 0.2
for t in threads: t.join()
flood = time.time() - t0
peak = mem("VmHWM"); during = mem("VmRSS")
time.sleep(12)
print(json.dumps({"n": n, "answers": {str(k): v for k, v in counts.items()}, "flood_s": round(flood, 2),
  "legit_login_s": round(legit, 2), "legit_status": status, "legit_tries": tries,
  "rss_before_mib": before, "rss_peak_mib": peak, "rss_end_mib": during, "rss_after_12s_idle_mib": mem("VmRSS")}))
