"""Every wire error round-trips through to_problem/from_problem; codes and names are unique."""

from __future__ import annotations

import json
import pickle

import pytest

from shoal.client import errors
from shoal.client.errors import ShoalApiError, ShoalError, error_for_code


def _all_wire_classes() -> list[type[ShoalApiError]]:
    out, todo = [], list(ShoalApiError.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        out.append(cls)
    return sorted(out, key=lambda c: c.__name__)


WIRE = _all_wire_classes()


def _example(cls: type[ShoalApiError]) -> ShoalApiError:
    fields = {name: f"{name}-value" for name in cls.fields}
    return cls(f"something about {cls.__name__}", **fields)


def test_the_table_is_complete():
    """Every code of API.md has its class (a guard against a class going missing)."""
    codes = {cls.code for cls in WIRE}
    assert {
        "UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "NOT_OWNER", "OFFSET_OUT_OF_RANGE", "INVALID_REQUEST",
        "CORRUPT_BATCH", "BATCH_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "STALE_EPOCH", "DUPLICATE_SEQUENCE",
        "OUT_OF_ORDER_SEQUENCE", "UNAUTHORIZED", "FORBIDDEN", "THROTTLED", "BROKER_UNAVAILABLE", "INTERNAL",
    } <= codes


def test_codes_and_names_are_unique():
    codes = [cls.code for cls in WIRE]
    names = [cls.__name__ for cls in WIRE]
    assert all(codes) and len(set(codes)) == len(codes)
    assert len(set(names)) == len(names)
    assert all(code == code.upper() and " " not in code for code in codes)


@pytest.mark.parametrize("cls", WIRE, ids=lambda c: c.code)
def test_round_trip_through_json(cls):
    """to_problem -> JSON text -> from_problem gives the same class, status, detail and fields."""
    original = _example(cls)
    body = json.dumps(original.to_problem())
    back = ShoalError.from_problem(body, status=999)
    assert type(back) is cls
    assert back.to_problem() == original.to_problem()
    assert back.http_status == cls.http_status
    assert back.detail == original.detail
    for name in cls.fields:
        assert getattr(back, name) == f"{name}-value"
    assert str(back) == f"[{cls.code}] something about {cls.__name__}"
    assert error_for_code(cls.code) is cls


@pytest.mark.parametrize("cls", WIRE, ids=lambda c: c.code)
def test_problem_shape(cls):
    problem = _example(cls).to_problem()
    assert problem["code"] == cls.code
    assert problem["status"] == cls.http_status
    assert 400 <= problem["status"] < 600
    assert problem["type"] == f"/problems/{cls.code}"  # relative: the project owns no domain
    assert problem["title"]


@pytest.mark.parametrize("cls", WIRE, ids=lambda c: c.code)
def test_received_type_and_instance_are_kept(cls):
    """A problem passed on (from_problem, then to_problem) keeps the type and instance it came with."""
    body = {**_example(cls).to_problem(), "type": "https://example.org/probs/x", "instance": "/log/42"}
    back = ShoalError.from_problem(json.dumps(body))
    assert back.to_problem() == body
    assert pickle.loads(pickle.dumps(back)).to_problem() == body


@pytest.mark.parametrize("cls", WIRE, ids=lambda c: c.code)
def test_pickles(cls):
    """Errors cross process and thread boundaries (the blocking client's futures)."""
    back = pickle.loads(pickle.dumps(_example(cls)))
    assert type(back) is cls and back.to_problem() == _example(cls).to_problem()


def test_unknown_code_keeps_status_code_and_fields():
    err = ShoalError.from_problem({"code": "FROM_THE_FUTURE", "status": 418, "detail": "teapot", "x": 1})
    assert type(err) is ShoalApiError
    assert (err.code, err.http_status, err.detail, err.extra) == ("FROM_THE_FUTURE", 418, "teapot", {"x": 1})
    assert err.to_problem()["type"] == "/problems/FROM_THE_FUTURE"


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", "[1, 2]", b"\xff\xfe"])
def test_non_problem_bodies_give_the_base_class(body):
    err = ShoalError.from_problem(body, status=502)
    assert type(err) is ShoalApiError
    assert err.http_status == 502


def test_retry_policy_is_readable_on_every_error():
    """Call sites read exc.retriable / exc.refresh_topology from any ShoalError."""
    assert errors.NotOwner.retriable and errors.NotOwner.refresh_topology
    assert errors.Throttled.retriable and not errors.Throttled.refresh_topology
    assert not errors.UnknownTopic.retriable and not errors.OffsetOutOfRange.retriable
    assert errors.BrokerUnreachable("http://x").retriable and errors.BrokerUnreachable("http://x").refresh_topology
    assert errors.ShoalTimeoutError("slow").retriable
    assert not errors.BufferFullError("full").retriable
    assert not errors.CorruptRecordError("bad").retriable
