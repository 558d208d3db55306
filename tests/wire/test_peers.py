"""Every request body we encode is accepted by weave 0.54.0's own request types.

The types are the TypedDicts generated from the server's OpenAPI spec
(``weave/vendor/weave_server_sdk/types/*_params.py``). A small structural checker walks
them: required keys present, no unknown keys (wire names, i.e. ``$expr`` not ``expr``),
values of the declared JSON types.
"""

from __future__ import annotations

import collections.abc
import datetime as dt
import typing

import msgspec
import pytest
import typing_extensions

from engine.wire import encode
from tests.wire.wire_samples import REQUESTS

pytestmark = pytest.mark.peers

types = pytest.importorskip("weave.vendor.weave_server_sdk.types", exc_type=ImportError)

# our request body type -> weave's params type, and the params keys that weave sends in
# the URL path rather than in the body
PEERS: dict[str, tuple[str, frozenset[str]]] = {
    "ObjCreateReq": ("ObjectCreateParams", frozenset()),
    "ObjReadReq": ("ObjectReadParams", frozenset()),
    "ObjQueryReq": ("ObjectQueryParams", frozenset()),
    "ObjDeleteReq": ("ObjectDeleteParams", frozenset()),
    "OpCreateV2Req": ("V2OpCreateParams", frozenset({"entity"})),
    "TableCreateReq": ("TableCreateParams", frozenset()),
    "TableUpdateReq": ("TableUpdateParams", frozenset()),
    "TableQueryReq": ("TableQueryParams", frozenset()),
    "TableQueryStatsReq": ("TableQueryStatsParams", frozenset()),
    "TableQueryStatsBatchReq": ("TableQueryStatsBatchParams", frozenset()),
    "TableCreateFromDigestsReq": ("TableCreateFromDigestsParams", frozenset()),
    "RefsReadBatchReq": ("RefReadBatchParams", frozenset()),
    "FileContentReadReq": ("FileContentParams", frozenset()),
    "FilesStatsReq": ("FileStatsParams", frozenset()),
    "FeedbackCreateReq": ("FeedbackCreateParams", frozenset()),
    "FeedbackCreateBatchReq": ("FeedbackBatchCreateParams", frozenset()),
    "FeedbackQueryReq": ("FeedbackQueryParams", frozenset()),
    "FeedbackPurgeReq": ("FeedbackPurgeParams", frozenset()),
    "FeedbackReplaceReq": ("FeedbackReplaceParams", frozenset()),
    "CostCreateReq": ("CostCreateParams", frozenset()),
    "CostQueryReq": ("CostQueryParams", frozenset()),
    "CostPurgeReq": ("CostPurgeParams", frozenset()),
    "CompletionsCreateReq": ("CompletionCreateParams", frozenset()),
    "ProjectStatsReq": ("ProjectStatsParams", frozenset()),
    "ThreadsQueryReq": ("ThreadStreamQueryParams", frozenset()),
}

# bodies weave 0.54.0 has no JSON params type for: legacy op routes it no longer calls,
# actions (not in its client), OTLP / multipart / GraphQL bodies (not JSON params)
NO_PEER = {"OpCreateReq", "OpReadReq", "OpQueryReq", "ActionsExecuteBatchReq", "OtelExportReq",
           "FileCreateReq", "EnsureProjectExistsReq", "GraphQLReq"}

_SEQUENCES = {list, collections.abc.Iterable, collections.abc.Sequence}
# typing's own Required/NotRequired exist from Python 3.11 (typing_extensions' before)
_REQUIRED_MARKS = tuple({typing_extensions.Required, typing_extensions.NotRequired,
                         getattr(typing, "Required", typing_extensions.Required),
                         getattr(typing, "NotRequired", typing_extensions.NotRequired)})


def _alias(hint) -> str | None:
    while typing.get_origin(hint) in _REQUIRED_MARKS:
        hint = typing.get_args(hint)[0]
    for meta in getattr(hint, "__metadata__", ()):
        if getattr(meta, "alias", None):
            return meta.alias
    return None


def _strip(hint):
    if isinstance(hint, typing_extensions.TypeAliasType):  # e.g. the recursive Operation
        hint = hint.__value__
    while typing.get_origin(hint) in (typing.Annotated, *_REQUIRED_MARKS):
        hint = typing.get_args(hint)[0]
    return hint


def _check(value, hint, path: str) -> None:
    hint = _strip(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (object, typing.Any):
        return
    if origin is typing.Union:
        errors = []
        for arm in args:
            try:
                _check(value, arm, path)
                return
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{path}: matches no arm of {hint}: {errors}")
    if hint is type(None):
        assert value is None, f"{path}: expected null"
    elif origin is typing.Literal:
        assert value in args, f"{path}: {value!r} not in {args}"
    elif typing_extensions.is_typeddict(hint):
        _check_typeddict(value, hint, path)
    elif origin in _SEQUENCES or getattr(hint, "__name__", "") == "SequenceNotStr" or (
            origin is not None and getattr(origin, "__name__", "") == "SequenceNotStr"):
        assert isinstance(value, list), f"{path}: expected array"
        for i, item in enumerate(value):
            _check(item, args[0] if args else object, f"{path}[{i}]")
    elif origin in (dict, collections.abc.Mapping):
        assert isinstance(value, dict), f"{path}: expected object"
        for k, item in value.items():
            _check(item, args[1], f"{path}.{k}")
    elif hint is float:
        assert isinstance(value, (int, float)) and not isinstance(value, bool), path
    elif hint is dt.datetime:
        assert isinstance(value, str), f"{path}: expected an ISO 8601 string"
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif hint in (str, int, bool):
        assert type(value) is hint, f"{path}: expected {hint.__name__}, got {value!r}"
    else:
        raise AssertionError(f"{path}: checker does not know {hint!r}")


def _check_typeddict(value, td, path: str, skip: frozenset[str] = frozenset()) -> None:
    assert isinstance(value, dict), f"{path}: expected object"
    hints = typing_extensions.get_type_hints(td, include_extras=True)
    wire = {(_alias(h) or k): (k, h) for k, h in hints.items() if k not in skip}
    unknown = set(value) - set(wire)
    assert not unknown, f"{path}: keys {unknown} unknown to {td.__name__}"
    for wire_key, (key, hint) in wire.items():
        if wire_key in value:
            _check(value[wire_key], hint, f"{path}.{wire_key}")
        else:
            assert key not in td.__required_keys__, f"{path}: missing {wire_key}"


# Requests weave 0.54.0 has no JSON params type for (NO_PEER) have nothing to check against.
@pytest.mark.parametrize("req", [r for r in REQUESTS if type(r).__name__ not in NO_PEER],
                         ids=lambda r: type(r).__name__)
def test_request_body_validates_against_weave_params(req):
    params_name, path_keys = PEERS[type(req).__name__]
    _check_typeddict(msgspec.json.decode(encode(req)), getattr(types, params_name), "$",
                     skip=path_keys)


def test_every_sample_request_is_mapped():
    assert {type(r).__name__ for r in REQUESTS} <= set(PEERS) | NO_PEER


@pytest.mark.parametrize("body", [
    {"project_id": "a/b", "refs": []},  # unknown key
    {"project_id": "a/b", "query": {"$expr": {"$nope": []}}},  # unknown operator
    {"project_id": 7, "query": {"$expr": {"$eq": [1, 1]}}},  # wrong type
])
def test_checker_rejects_bodies_weave_would_not_send(body):
    with pytest.raises(AssertionError):
        _check_typeddict(body, types.FeedbackPurgeParams, "$")
