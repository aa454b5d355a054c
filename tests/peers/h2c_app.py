"""The smallest ASGI app, served by hypercorn for the h2c upgrade test: 200 and the HTTP version."""
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello over " + scope["http_version"].encode()})
