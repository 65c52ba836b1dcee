"""The exception tree drawn in ``h2guard.errors``'s docstring is the real class hierarchy, and
every FailureKind has an exception type (the one the drawing puts it on)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import get_args

import httpx
import pytest

from h2guard import errors
from h2guard.errors import Failure, FailureKind, attach, failure_of

_LINE = re.compile(r"^(?P<lead>[ │├└─]*)(?P<name>[A-Za-z_][\w.]*)(?:\s{2,}(?P<note>\S.*))?$")
_KINDS = re.compile(r"^\s*([a-z0-9_]+(?:\s*,\s*[a-z0-9_]+)*)\s*(?::|$)")


@dataclass
class Node:
    name: str
    column: int
    parent: str | None
    kinds: tuple[str, ...]


def _drawing() -> list[Node]:
    """The tree after ``the tree ...::`` in the docstring: one class per line, children indented
    under their parent with box-drawing characters, then (optionally) ``kind, kind: words``."""
    doc = errors.__doc__ or ""
    block = doc.split("::\n", 1)[1]
    lines: list[str] = []
    for line in block.splitlines():
        if not lines and not line.strip():
            continue
        if not line.strip():
            break
        lines.append(line)
    nodes: list[Node] = []
    stack: list[Node] = []
    for line in lines:
        match = _LINE.match(line.rstrip())
        assert match, f"not a tree line: {line!r}"
        column = len(match["lead"])
        while stack and stack[-1].column >= column:
            stack.pop()
        kinds: tuple[str, ...] = ()
        note = match["note"] or ""
        found = _KINDS.match(note)
        if found and not match["name"].startswith("httpx."):
            kinds = tuple(k.strip() for k in found.group(1).split(","))
        node = Node(match["name"], column, stack[-1].name if stack else None, kinds)
        nodes.append(node)
        stack.append(node)
    return nodes


def _resolve(name: str) -> type[BaseException]:
    if name.startswith("httpx."):
        cls = getattr(httpx, name.removeprefix("httpx."))
    else:
        cls = getattr(errors, name)
    assert isinstance(cls, type) and issubclass(cls, BaseException), name
    return cls


def test_the_drawing_parses_into_one_rooted_tree() -> None:
    nodes = _drawing()
    assert nodes[0].name == "httpx.TransportError" and nodes[0].parent is None
    assert all(n.parent is not None for n in nodes[1:])
    names = [n.name for n in nodes]
    assert len(names) == len(set(names)), "a class drawn twice"
    # httpx's NetworkError level is drawn (ConnectError and WriteError sit below it)
    parents = {n.name: n.parent for n in nodes}
    assert parents["httpx.ConnectError"] == parents["httpx.WriteError"] == "httpx.NetworkError"
    assert parents["httpx.NetworkError"] == "httpx.TransportError"


@pytest.mark.parametrize("node", _drawing()[1:], ids=lambda n: n.name)
def test_each_drawn_class_has_its_drawn_parent_as_a_real_base(node: Node) -> None:
    cls = _resolve(node.name)
    assert node.parent is not None
    parent = _resolve(node.parent)
    assert parent in cls.__bases__, (
        f"{node.name} is drawn under {node.parent}, but its bases are "
        f"{[b.__qualname__ for b in cls.__bases__]}")
    # ... and nothing else of httpx's tree sits between them or beside it: the other bases
    # are h2guard's private mixin only
    others = [b for b in cls.__bases__ if b is not parent]
    assert all(not issubclass(b, httpx.HTTPError) for b in others), others


def test_every_exception_class_of_the_module_is_drawn() -> None:
    drawn = {n.name for n in _drawing()}
    public = {name for name in errors.__all__
              if isinstance(getattr(errors, name), type)
              and issubclass(getattr(errors, name), httpx.HTTPError)}
    assert public, "no exception classes found"
    assert public <= drawn, f"not drawn: {sorted(public - drawn)}"
    for name in public:  # and each one carries a Failure
        assert issubclass(getattr(errors, name), errors._Carrier), name


def test_every_failure_kind_maps_to_a_type() -> None:
    kinds = set(get_args(FailureKind))
    assert set(errors._TYPES) == kinds, (
        f"kinds without a type: {sorted(kinds - set(errors._TYPES))}; "
        f"types for unknown kinds: {sorted(set(errors._TYPES) - kinds)}")
    for kind, cls in errors._TYPES.items():
        assert issubclass(cls, httpx.TransportError), kind


def test_the_drawing_names_the_kinds_of_each_type() -> None:
    """Each kind is written on exactly one line of the drawing: the line of its type."""
    seen: dict[str, str] = {}
    for node in _drawing():
        for kind in node.kinds:
            assert kind not in seen, f"{kind} drawn on {seen[kind]} and {node.name}"
            seen[kind] = node.name
    missing = set(get_args(FailureKind)) - set(seen)
    assert not missing, f"kinds the drawing does not name: {sorted(missing)}"
    assert set(seen) <= set(get_args(FailureKind)), sorted(set(seen) - set(get_args(FailureKind)))
    for kind, name in seen.items():
        assert errors._TYPES[kind] is getattr(errors, name), kind  # type: ignore[index]


@pytest.mark.parametrize("kind", get_args(FailureKind))
def test_attach_builds_the_kinds_type_with_the_record(kind: FailureKind) -> None:
    failure = Failure(kind, "no", detail=f"a {kind} failure")
    request = httpx.Request("POST", "https://api.test/")
    exc = attach(failure, request=request)
    assert type(exc) is errors._TYPES[kind]
    assert failure_of(exc) is failure
    assert exc.request is request
    assert "\n" not in str(exc) and str(exc)


def test_body_not_replayable_is_not_a_lost_connection() -> None:
    exc = attach(Failure("body_not_replayable", "no", detail="one-shot body"))
    assert isinstance(exc, errors.BodyNotReplayableError)
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert not isinstance(exc, errors.ConnectionLostError)


def test_deadline_is_a_timeout_and_connect_a_network_error() -> None:
    assert isinstance(attach(Failure("deadline", "maybe")), httpx.TimeoutException)
    assert isinstance(attach(Failure("connect", "no")), httpx.NetworkError)
    assert isinstance(attach(Failure("write", "maybe")), httpx.NetworkError)
    assert isinstance(attach(Failure("retry_budget", "maybe")), httpx.TransportError)
