"""The request path: handler (route, one attempt loop, fall back), attempt (the body and
one upstream attempt), headers (what crosses the proxy, pure), relay (the upstream's answer
to the client through a sink), shadow (mirroring, wrapped around the relay), state (what
lives as long as the process), reload (live configuration)."""
