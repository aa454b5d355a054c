"""An application that makes outbound HTTP requests (CLIENT side). It waits for a line on stdin
(so the agent can attach first), then requests every path given, on one keep-alive connection,
printing one JSON line per request with its wall-clock window."""
import http.client
import json
import sys
import time

port = int(sys.argv[1])
paths = sys.argv[2:]
print("ready", flush=True)
sys.stdin.readline()
conn = http.client.HTTPConnection("127.0.0.1", port)
for path in paths:
    start = time.time_ns()
    conn.request("GET", path, headers={"User-Agent": "e2e-client/1.0"})
    resp = conn.getresponse()
    resp.read()
    end = time.time_ns()
    print(json.dumps({"path": path, "status": resp.status, "start": start, "end": end}), flush=True)
conn.close()
print("done", flush=True)
