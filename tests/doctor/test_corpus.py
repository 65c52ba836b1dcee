"""The acceptance corpus: real error strings, each written from its program's source, must be
classified to the expected frame, code and sender (tests/doctor/corpus.toml)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from h2guard.doctor.explain import explain

CORPUS = Path(__file__).with_name("corpus.toml")


def _entries() -> list[dict[str, Any]]:
    with CORPUS.open("rb") as f:
        entries: list[dict[str, Any]] = tomllib.load(f)["entry"]
    return entries


ENTRIES = _entries()


def test_corpus_is_big_and_varied_enough() -> None:
    assert len(ENTRIES) >= 60
    assert len({e["program"] for e in ENTRIES}) >= 10


def test_every_entry_cites_its_source() -> None:
    for e in ENTRIES:
        assert e["source"].strip(), e["text"]
        # "repository: path, function": a repository and a file or resource are named
        assert ":" in e["source"] and "/" in e["source"], e["source"]
        assert e["frame"] in {"RST_STREAM", "GOAWAY", "TCP", "timeout", "local"}
        assert e["sender"] in {"server", "proxy/load balancer", "client itself", "unknown"}


def test_corpus_texts_are_distinct() -> None:
    texts = [e["text"] for e in ENTRIES]
    assert len(texts) == len(set(texts))


@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{i:03d}-{e['program']}"
                                                 for i, e in enumerate(ENTRIES)])
def test_entry_is_classified(entry: dict[str, Any]) -> None:
    found = explain(entry["text"])
    assert found is not None, f"not recognised: {entry['text']!r}"
    got = (found.program, found.frame, found.code or "", found.sender)
    want = (entry["program"], entry["frame"], entry["code"], entry["sender"])
    assert got == want, f"{entry['text']!r} matched {found.pattern}"
    assert found.causes and found.fixes


def test_every_entry_passes_the_log_scan_prefilter() -> None:
    from h2guard.doctor.explain import _might_match

    for e in ENTRIES:
        for line in e["text"].splitlines() or [e["text"]]:
            if explain(line) is not None:  # the line a log scan would see recognised
                assert _might_match(line), line
