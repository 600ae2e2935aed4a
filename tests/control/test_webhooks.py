"""The autopilot's webhooks against a real aiohttp receiver on loopback."""

from __future__ import annotations

import logging
import socket
import threading

import pytest

from proxy import __version__
from proxy.control import webhooks
from proxy.control.webhooks import Notifier, confirm, shown
from tests.support import free_port
from tests.support.hooks import hook_server

PAYLOAD = {"event": "promote", "stage": 2, "percentage": 30.0, "figures": None, "reason": "ok"}


@pytest.mark.parametrize(
    ("url", "safe"),
    [
        ("https://hooks.example.com/services/T000/B000/XXXX", "https://hooks.example.com/…"),
        ("https://user:pw@hooks.example.com:8443/x?token=1", "https://hooks.example.com:8443/…"),
        ("http://127.0.0.1:9000", "http://127.0.0.1:9000"),
        ("http://127.0.0.1:9000/?token=1", "http://127.0.0.1:9000/…"),
        ("http://[::1]:9000/hook", "http://[::1]:9000/…"),
    ],
)
def test_urls_are_shown_without_path_query_or_credentials(url: str, safe: str) -> None:
    assert shown(url) == safe


def test_a_post_arrives_as_json_at_every_url() -> None:
    with hook_server() as one, hook_server() as two:
        notifier = Notifier([one.url(), two.url("/other")])
        notifier.post(PAYLOAD)
        assert notifier.close(timeout=30) == 0
    for server, path in ((one, "/hook/T0KEN-secret?sig=abc"), (two, "/other")):
        assert len(server.received) == 1
        got = server.received[0]
        assert got.path_qs == path
        assert got.payload == PAYLOAD
        assert got.headers["Content-Type"] == "application/json"
        assert got.headers["User-Agent"] == f"rollout-proxy/{__version__}"


def test_a_500_is_retried_until_it_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    with hook_server([500, 503]) as server:
        notifier = Notifier([server.url()], attempts=3, backoff=0.01)
        notifier.post(PAYLOAD)
        assert notifier.close(timeout=30) == 0
    assert [r.payload for r in server.received] == [PAYLOAD] * 3
    assert not [r for r in caplog.records if r.name == "rollout.webhooks"]


def test_it_gives_up_after_the_attempts_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with hook_server(status=500) as server:
        notifier = Notifier([server.url()], attempts=3, backoff=0.01)
        with caplog.at_level(logging.WARNING, logger="rollout.webhooks"):
            notifier.post(PAYLOAD)
            assert notifier.close(timeout=30) == 0  # tried to the end: nothing left pending
    assert len(server.received) == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "rollout.webhooks"]
    assert warnings == [
        f"events webhook http://127.0.0.1:{server.port}/… answered 500; gave up after 3 attempt(s)"
    ]
    assert "T0KEN" not in caplog.text


def test_an_unreachable_url_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier([f"http://127.0.0.1:{free_port()}/hook"], attempts=2, backoff=0.01)
    with caplog.at_level(logging.WARNING, logger="rollout.webhooks"):
        notifier.post(PAYLOAD)
        assert notifier.close(timeout=30) == 0
    (message,) = [r.getMessage() for r in caplog.records if r.name == "rollout.webhooks"]
    assert "cannot be reached" in message
    assert "gave up after 2 attempt(s)" in message


def test_post_returns_while_the_receiver_has_not_answered() -> None:
    with hook_server() as server:
        server.hold()
        notifier = Notifier([server.url()], timeout=30)
        notifier.post(PAYLOAD)  # returned: the receiver has not answered anything yet
        assert server.wait_for(1)
        server.release()
        assert notifier.close(timeout=30) == 0
    assert [r.payload for r in server.received] == [PAYLOAD]


def test_close_drains_what_is_queued_in_order() -> None:
    with hook_server() as server:
        server.hold()
        notifier = Notifier([server.url()], timeout=30)
        for n in range(5):
            notifier.post({"n": n})
        assert server.wait_for(1)
        server.release()
        assert notifier.close(timeout=30) == 0
    assert [r.payload for r in server.received] == [{"n": n} for n in range(5)]


def test_close_gives_up_at_its_timeout_and_counts_the_undelivered() -> None:
    with hook_server() as server:
        server.hold()
        notifier = Notifier([server.url()], timeout=30, attempts=1)
        for n in range(3):
            notifier.post({"n": n})
        assert server.wait_for(1)
        assert notifier.close(timeout=0.2) == 3  # one in flight, two queued
        notifier.post({"n": 3})  # closed: dropped, not queued
        server.release()
    assert [r.payload for r in server.received] == [{"n": 0}]


def test_a_full_queue_drops_the_oldest(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(webhooks, "QUEUE_SIZE", 2)
    with hook_server() as server:
        server.hold()
        notifier = Notifier([server.url()], timeout=30)
        notifier.post({"n": 0})
        assert server.wait_for(1)  # in flight, out of the queue
        with caplog.at_level(logging.WARNING, logger="rollout.webhooks"):
            for n in (1, 2, 3):
                notifier.post({"n": n})
        server.release()
        assert notifier.close(timeout=30) == 0
    assert [r.payload for r in server.received] == [{"n": 0}, {"n": 2}, {"n": 3}]
    assert "webhook queue full (2): the oldest payload was dropped" in caplog.text


def test_a_receiver_that_never_answers_is_bounded_by_the_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with hook_server() as server:
        server.hold()
        notifier = Notifier([server.url()], timeout=0.3, attempts=2, backoff=0.01)
        with caplog.at_level(logging.WARNING, logger="rollout.webhooks"):
            notifier.post(PAYLOAD)
            assert notifier.close(timeout=30) == 0  # both attempts timed out well before
        problems = confirm([server.url()], PAYLOAD, timeout=0.3, attempts=2)
        assert server.wait_for(4)
    assert problems == [
        f"confirm hook http://127.0.0.1:{server.port}/… did not answer within 0.3 s"
    ]
    assert "did not answer within 0.3 s; gave up after 2 attempt(s)" in caplog.text


def test_confirm_is_empty_when_every_hook_answers_2xx() -> None:
    with hook_server() as one, hook_server([204]) as two:
        assert confirm([one.url(), two.url()], PAYLOAD) == []
    assert [r.payload for r in one.received + two.received] == [PAYLOAD, PAYLOAD]


def test_confirm_names_the_hook_that_refused_and_does_not_ask_it_twice() -> None:
    with hook_server() as one, hook_server(status=409) as two:
        problems = confirm([one.url(), two.url()], PAYLOAD, attempts=2)
    assert problems == [f"confirm hook http://127.0.0.1:{two.port}/… answered 409"]
    assert len(two.received) == 1  # a 4xx is the hook's answer


def test_confirm_asks_again_after_a_5xx() -> None:
    with hook_server([503]) as server:
        assert confirm([server.url()], PAYLOAD, attempts=2) == []
    assert len(server.received) == 2


def test_confirm_reports_an_unreachable_hook() -> None:
    (problem,) = confirm([f"http://127.0.0.1:{free_port()}/x"], PAYLOAD, timeout=2)
    assert problem.startswith("confirm hook http://127.0.0.1:")
    assert "cannot be reached" in problem


def test_an_answer_that_is_not_http_is_a_warning_and_later_posts_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    garbage = socket.socket()
    garbage.bind(("127.0.0.1", 0))
    garbage.listen()
    garbage.settimeout(30)

    def answer_garbage() -> None:
        for _ in range(2):  # one connection per attempt
            conn, _ = garbage.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"SPAM SPAM SPAM\r\n\r\n")

    responder = threading.Thread(target=answer_garbage, daemon=True)
    responder.start()
    bad = f"http://127.0.0.1:{garbage.getsockname()[1]}/hook"
    try:
        with hook_server() as good:
            notifier = Notifier([bad, good.url()], attempts=1, backoff=0.01)
            with caplog.at_level(logging.WARNING, logger="rollout.webhooks"):
                notifier.post({"n": 1})
                notifier.post({"n": 2})
                assert notifier.close(timeout=30) == 0
    finally:
        responder.join(timeout=30)
        garbage.close()
    assert [r.payload for r in good.received] == [{"n": 1}, {"n": 2}]
    messages = [r.getMessage() for r in caplog.records if r.name == "rollout.webhooks"]
    assert len(messages) == 2
    assert all("gave an answer that is not HTTP" in m for m in messages)
