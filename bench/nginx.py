"""nginx configurations for the benchmarks: upstreams and the reference proxies.

`run.py` uses the fixed-body upstreams and the `split_clients` reference; `stream.py` the
file server and the streaming proxy; `websocket.py` the WebSocket proxy.

Everything nginx writes (pid, error log, temp directories) lives under the prefix the
benchmark passes with `nginx -p PREFIX -c CONF`, so nothing under /etc is touched and no
root-owned state is left behind. Both configurations run in the foreground
(`daemon off`) so the benchmark owns the master process and its process group.
"""

from __future__ import annotations

import json
from pathlib import Path

BODY_BYTES = 208


def fixed_body() -> str:
    """A JSON answer of exactly BODY_BYTES bytes, shaped like a small `/signals` page."""
    doc: dict[str, object] = {
        "items": [
            {"code": "600519", "signal": "buy", "score": 0.91},
            {"code": "000858", "signal": "hold", "score": 0.42},
        ],
        "source": "bench-upstream",
        "ts": 1700000000,
        "pad": "",
    }
    short = len(json.dumps(doc, separators=(",", ":")))
    doc["pad"] = "x" * (BODY_BYTES - short)
    body = json.dumps(doc, separators=(",", ":"))
    if len(body.encode()) != BODY_BYTES or any(c in body for c in "'$\\"):
        raise AssertionError(f"fixed body is {len(body)} bytes or not nginx-quotable")
    return body


def _preamble(prefix: Path, name: str) -> str:
    logs = prefix / "logs"
    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
error_log {logs}/{name}.error.log warn;
pid {logs}/{name}.pid;

events {{
    worker_connections 16384;
}}
"""


def _http_common(prefix: Path, name: str) -> str:
    temp = prefix / "temp" / name
    return f"""\
    access_log off;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    # nginx closes a client connection after 1000 requests by default; wrk and the
    # proxies keep connections for the whole run, so the upstreams must too.
    keepalive_requests 1000000;
    keepalive_timeout 75s;
"""


def upstream_conf(prefix: Path, *, signal_port: int, legacy_port: int) -> str:
    """One nginx answering the fixed body on two ports: the "signal" and "legacy" APIs.

    `X-Upstream` names the side, so the benchmark can check each proxy's split at start-up.
    """
    body = fixed_body()
    servers = "".join(
        f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type application/json;
            add_header X-Upstream {side};
            return 200 '{body}';
        }}
    }}
"""
        for side, port in (("signal", signal_port), ("legacy", legacy_port))
    )
    common = _http_common(prefix, "upstream")
    return f"{_preamble(prefix, 'upstream')}\nhttp {{\n{common}{servers}}}\n"


def split_conf(
    prefix: Path,
    *,
    listen_port: int,
    signal_port: int,
    legacy_port: int,
    percentage: int = 10,
    keepalive: int = 512,
) -> str:
    """The reference: nginx `split_clients` on the session header, pooled upstream connections.

    `split_clients` hashes with MurmurHash2, not rollout's MurmurHash3, so the same session
    may land on a different side than in rollout; the share sent to signal is the same.
    """
    return f"""\
{_preamble(prefix, "split")}
http {{
{_http_common(prefix, "split")}
    split_clients "${{http_x_session_id}}" $backend {{
        {percentage}% signal;
        * legacy;
    }}

    upstream signal {{
        server 127.0.0.1:{signal_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}

    upstream legacy {{
        server 127.0.0.1:{legacy_port};
        keepalive {keepalive};
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://$backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


def file_server_conf(prefix: Path, *, port: int, root: Path) -> str:
    """Static files from `root` (the stream benchmark's body): sendfile, so serving costs
    the upstream next to nothing."""
    return f"""\
{_preamble(prefix, "files")}
http {{
{_http_common(prefix, "files")}
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root};
        default_type application/octet-stream;
    }}
}}
"""


def stream_proxy_conf(prefix: Path, *, servers: dict[int, str], upstream_port: int) -> str:
    """nginx in front of one upstream: one server per listen port in `servers`, each with
    its own extra directives (`proxy_buffering off;` ...), otherwise nginx's defaults.

    With buffering off nginx writes what it read at once, through one `proxy_buffer_size`
    buffer (one memory page by default); with it on (the default) it reads ahead into
    `proxy_buffers` and spills into a temp file under the prefix.
    """
    blocks = "".join(
        f"""
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://body;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            {directives}
        }}
    }}
"""
        for port, directives in servers.items()
    )
    return f"""\
{_preamble(prefix, "stream")}
http {{
{_http_common(prefix, "stream")}
    upstream body {{
        server 127.0.0.1:{upstream_port};
        keepalive 16;
    }}
{blocks}}}
"""


def websocket_proxy_conf(prefix: Path, *, listen_port: int, upstream_port: int) -> str:
    """nginx's documented WebSocket proxying: HTTP/1.1 upstream, Upgrade and Connection
    passed on, then nginx relays bytes both ways."""
    return f"""\
{_preamble(prefix, "websocket")}
http {{
{_http_common(prefix, "websocket")}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" close;
    }}

    server {{
        listen 127.0.0.1:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}
    }}
}}
"""


def write_conf(prefix: Path, name: str, text: str) -> Path:
    """Write `name.conf` under the prefix and create the directories it names."""
    (prefix / "logs").mkdir(parents=True, exist_ok=True)
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / name / sub).mkdir(parents=True, exist_ok=True)
    path = prefix / f"{name}.conf"
    path.write_text(text)
    return path
