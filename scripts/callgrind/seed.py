#!/usr/bin/env python3
"""For scripts/callgrind-hot-path.sh: seed.py PORT OUT.json, a guest session and a user,
each with a 3-line cart, through the gateway; their credentials in OUT.json."""
import http.client, json, sys, uuid
port, out = int(sys.argv[1]), sys.argv[2]
def call(method, path, body=None, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", port)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body); h["Content-Type"] = "application/json"
    c.request(method, path, body=data, headers=h)
    r = c.getresponse(); b = r.read()
    return r.status, (json.loads(b) if b else None)
s, sess = call("POST", "/api/v1/sessions"); assert s == 201, s
gh = {"X-Session-Token": sess["session_token"]}
for i in (1, 2, 3):
    s, _ = call("POST", "/api/v1/cart/items", {"product_id": "sku-%d" % i, "quantity": i}, gh); assert s == 200, s
email = "perf-%s@example.com" % uuid.uuid4().hex[:12]
s, _ = call("POST", "/api/v1/auth/register", {"email": email, "password": "correct horse battery"}); assert s == 201, s
s, login = call("POST", "/api/v1/auth/login", {"email": email, "password": "correct horse battery"}); assert s == 200, (s, login)
uh = {"Authorization": "Bearer " + login["access_token"]}
for i in (1, 2, 3):
    s, _ = call("POST", "/api/v1/cart/items", {"product_id": "sku-%d" % i, "quantity": i}, uh); assert s == 200, s
json.dump({"guest_token": sess["session_token"], "access_token": login["access_token"]}, open(out, "w"))
print("seeded", email)
