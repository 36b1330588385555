#!/usr/bin/env python3
"""Sequential keep-alive HTTP load for scripts/callgrind-hot-path.sh: load.py PORT MODE N CRED.json
MODE: guest-get user-get guest-post user-post. Prints statuses."""
import http.client, json, sys, collections
port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
cred = json.load(open(sys.argv[4]))
c = http.client.HTTPConnection("127.0.0.1", port)
h = {}
if mode.startswith("guest"):
    h["X-Session-Token"] = cred["guest_token"]
else:
    h["Authorization"] = "Bearer " + cred["access_token"]
st = collections.Counter()
for i in range(n):
    if mode.endswith("get"):
        c.request("GET", "/api/v1/cart", headers=h)
    else:
        hh = dict(h); hh["Content-Type"] = "application/json"
        body = json.dumps({"product_id": "sku-%d" % (i % 3 + 1), "quantity": 1})
        c.request("POST", "/api/v1/cart/items", body=body, headers=hh)
    r = c.getresponse(); r.read(); st[r.status] += 1
print(dict(st))
