"""proxy.records.pilot_document: the controller's state as JSON and back."""

from __future__ import annotations

import dataclasses
import json

from proxy.records.pilot_document import pilot_state, state_document
from proxy.rollout.pilot import PauseKind, Walk, initial_state


def test_a_walk_survives_the_round_trip() -> None:
    walk = Walk(50.0, 30.0, 5.0, "2 failed analyses in a row")
    state = dataclasses.replace(
        initial_state(45.0, False, 1000.0), pause=PauseKind.ROLLBACK, walk=walk
    )
    doc = json.loads(json.dumps(state_document(state)))
    assert doc["walk"] == {"start": 50, "target": 30, "step": 5, "reason": walk.reason}
    assert pilot_state(doc) == state
    assert pilot_state(doc).walking


def test_a_state_written_before_gradual_rollbacks_reads_without_a_walk() -> None:
    doc = state_document(initial_state(30.0, False, 1000.0))
    del doc["walk"]
    assert pilot_state(doc).walk is None
