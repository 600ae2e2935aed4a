"""The status page's routes and document (proxy/page.py), on a real admin application."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.admin import create_admin_app
from proxy.app import build_runtime
from proxy.config.load import load_config
from proxy.page import ASSETS, add_status_page, page_document, shadow_page
from proxy.records.history import record
from proxy.records.pilot_document import state_document
from proxy.records.pilot_state import state_path, write_controller
from proxy.rollout.counters import Counters
from proxy.rollout.pilot import PilotState
from proxy.rollout.ring import Reading, Ring
from tests.support import config_dict, write_config

Client = Callable[[web.Application], Awaitable[TestClient[Any, Any]]]


def config_file(tmp_path: Path, **sections: Any) -> Path:
    data = config_dict("http://127.0.0.1:9", "http://127.0.0.1:9", **sections)
    return write_config(tmp_path / "rollout.yaml", data)


def document(path: Path) -> Any:
    runtime = build_runtime(path, load_config(path))
    return page_document(runtime, Ring(), time.time())


async def admin(aiohttp_client: Client, path: Path) -> TestClient[Any, Any]:
    app = create_admin_app(build_runtime(path, load_config(path)))
    add_status_page(app, Ring())
    return await aiohttp_client(app)


async def test_with_a_token_the_page_and_assets_are_open_and_the_data_is_not(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await admin(aiohttp_client, config_file(tmp_path, admin={"token": "t0k"}))
    page = await client.get("/")
    assert page.status == 200
    assert '<section class="card" id="preview">' in await page.text()
    for name in ASSETS:
        assert (await client.get(f"/-/assets/{name}")).status == 200
    assert (await client.get("/-/page")).status == 401
    assert (await client.get("/-/status")).status == 401
    assert (await client.post("/")).status == 401  # only reading the page is open
    answer = await client.get("/-/page", headers={"Authorization": "Bearer t0k"})
    assert answer.status == 200
    assert (await answer.json())["plan"]["percentage"] == 0


async def test_only_listed_assets_are_served_and_the_page_allows_only_itself(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    client = await admin(aiohttp_client, config_file(tmp_path))
    assert (await client.get("/-/assets/README")).status == 404
    assert (await client.get("/-/assets/..%2Fpage.py")).status == 404
    page = await client.get("/")
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "http" not in policy  # no other origin is allowed for anything
    html = await page.text()
    assert "http://" not in html
    assert "https://" not in html


def test_without_files_beside_the_config_the_document_says_so(tmp_path: Path) -> None:
    doc = document(config_file(tmp_path, rollout={"percentage": 30, "stages": [10, 30, 100]}))
    assert doc["plan"] == {"stages": [10, 30, 100], "percentage": 30, "current_stage": 1}
    assert doc["autopilot"]["message"] == "autopilot not running on this config (no state file yet)"
    assert doc["autopilot"]["running"] is False
    assert doc["history"] == {"entries": [], "message": "no history yet (no rollout-history.jsonl)"}
    assert doc["shadow"]["match_rate"] is None
    assert doc["series"]["seconds"] == 900
    json.dumps(doc)  # it is a JSON document


@pytest.mark.parametrize("content", ["{not json", '{"version": 99}', "[]"])
def test_a_corrupt_state_file_is_a_message_not_a_broken_page(tmp_path: Path, content: str) -> None:
    path = config_file(tmp_path)
    state_path(path).write_text(content, encoding="utf-8")
    message = document(path)["autopilot"]["message"]
    assert message.startswith("cannot read the autopilot state: ")
    assert "rollout-autopilot.json" in message


def test_a_controller_part_that_is_not_one_is_a_message(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    write_controller(path, {"state": {"percentage": "ten"}, "analyses": []})
    assert document(path)["autopilot"]["message"].startswith("cannot read the autopilot state")


def test_the_autopilot_state_and_its_next_action(tmp_path: Path) -> None:
    path = config_file(tmp_path, rollout={"percentage": 10, "stages": [10, 50, 100]})
    state = PilotState(percentage=10, emergency=False, stage_entered_at=time.time(), passes=1)
    controller = {
        "state": state_document(state),
        "analyses": [],
        "next_at": 123.0,
        "held": None,
        "next_action": "as saved",
        "pending": None,
        "pid": 1,
        "updated_at": 1.0,
    }
    write_controller(path, controller)
    ap = document(path)["autopilot"]
    assert ap["message"] is None
    assert ap["state"] is not None
    assert ap["state"]["passes"] == 1
    assert ap["next_at"] == 123.0
    assert "bake" in ap["next_action"]  # computed now, as `rollout autopilot status` does


def test_the_last_twenty_history_entries_and_unreadable_lines(tmp_path: Path) -> None:
    path = config_file(tmp_path)
    for pct in range(25):
        record(path, command=f"rollout set {pct}", before=0, after=pct, reason=None, live=None)
    with (tmp_path / "rollout-history.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"cut short\n')
    history = document(path)["history"]
    assert [e["after"] for e in history["entries"]] == list(range(5, 25))
    assert history["message"] == "1 unreadable line(s) in rollout-history.jsonl (line 26 first)"


def test_the_shadow_match_rate_is_over_every_feature() -> None:
    counters = Counters({}, {}, {}, {}, guard_tripped=False, read_at=1.0)
    shadow = {
        ("default", "match"): 6.0,
        ("default", "mismatch"): 1.0,
        ("beta", "match"): 2.0,
        ("beta", "mismatch"): 1.0,
        ("beta", "error"): 5.0,  # not a comparison
    }
    page = shadow_page(True, Reading(counters, {}, shadow))
    assert page["match_rate"] == 0.8
    assert page["compared"] == 10
    assert page["counts"]["beta"] == {"match": 2, "mismatch": 1, "error": 5}
    assert shadow_page(False, None)["match_rate"] is None
