"""The bench HTML report, rendered by a real browser: headless Chromium (Debian package).

One run dumps the DOM after rendering (the grid and the SVG charts are there, with drawn
shapes), another takes a screenshot of a 1400 x 2000 window, decoded here with the standard
library (zlib and PNG's five scanline filters), in which the grid's green, amber and red cells,
the duplicate marker and the charts' colours must cover real areas of pixels.

Every Chromium run is bounded (60 s) and started in its own process group, killed whole when
it overruns; Chromium runs as root here, so it needs ``--no-sandbox``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from h2guard.bench.html import COLOURS, FAULT_COLOURS, render_html

WIDTH, HEIGHT = 1400, 2000
RESET = ("RemoteProtocolError: <StreamReset stream_id:5, error_code:ErrorCodes.REFUSED_STREAM, "
         "remote_reset:True>")
SKIP = "chromium not found: scripts/install-peers.sh installs the Debian package chromium"


def _chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None and os.access("/usr/bin/chromium", os.X_OK):
        path = "/usr/bin/chromium"
    if path is None:
        pytest.skip(SKIP)
    return path


# ---------------------------------------------------------------------------------------------
# A result that looks like a real quick run


def _latencies(rng: random.Random, n: int, median: float, spread: float) -> list[float]:
    return sorted(round(rng.lognormvariate(0, spread) * median, 2) for _ in range(n))


def _cell(rng: random.Random, client: str, scenario: str, *, ok: float, dups: int = 0,
          median: float = 12.0, attempts: float = 1.0, faults: str = "goaway NO_ERROR",
          error: str = RESET) -> dict[str, Any]:
    requests = 120
    succeeded = round(requests * ok)
    failed = requests - succeeded
    lat = _latencies(rng, requests, median, 0.8)
    failed_lat = sorted(rng.sample(lat, failed)) if failed else []
    ok_lat = sorted(v for v in lat if v not in failed_lat)
    duration = 2.4 + rng.random()
    fault_times = sorted(round(rng.uniform(0, duration), 3) for _ in range(30))
    error_times = sorted(round(rng.uniform(0, duration), 3) for _ in range(failed))
    return {
        "client": client, "scenario": scenario, "requests": requests, "succeeded": succeeded,
        "failed": failed, "success_rate": succeeded / requests, "duplicates": dups,
        "effects": 80 + dups, "posts": 80,
        "p50_ms": ok_lat[len(ok_lat) // 2] if ok_lat else None,
        "p99_ms": ok_lat[int(len(ok_lat) * 0.99)] if ok_lat else None,
        "attempts_per_request": attempts, "throughput_rps": 300.0 + rng.random() * 200,
        "errors": [{"text": error, "count": failed}] if failed else [],
        "latencies_ms": lat, "failed_latencies_ms": failed_lat,
        "timeline": {"duration_s": duration,
                     "faults": [[t, faults if i % 3 else "max_concurrent_streams REFUSED_STREAM"]
                                for i, t in enumerate(fault_times)],
                     "errors": [[t, error] for t in error_times],
                     "waves": [0.0, round(duration / 3, 3), round(2 * duration / 3, 3)]},
        "elapsed_s": duration + 0.3, "problem": None,
    }


def sample_result() -> dict[str, Any]:
    rng = random.Random(7)
    scenarios = [
        ("refused-burst", "REFUSED_STREAM burst", "targeted"),
        ("goaway-rolling", "GOAWAY during a deploy", "targeted"),
        ("alb-idle", "ALB idle timeout", "middlebox"),
        ("internal-after-app", "INTERNAL_ERROR after the app ran", "targeted"),
        ("nginx-keepalive", "nginx keepalive_requests", "middlebox"),
    ]
    clients = [
        ("h2guard", "h2guard.AsyncClient", "Python"), ("httpx", "httpx (HTTP/2)", "Python"),
        ("httpx-naive-retry", "httpx + naive retry", "Python"),
        ("niquests", "niquests", "Python"), ("go", "Go net/http", "Go"),
        ("curl", "curl --http2", "C"),
    ]
    # success rate, duplicates per (client, scenario)
    plan: dict[str, list[tuple[float, int]]] = {
        "h2guard": [(1, 0)] * 5,
        "httpx": [(0.85, 0), (0.9, 0), (0.96, 0), (0.9, 0), (0.7, 0)],
        "httpx-naive-retry": [(1, 0), (1, 3), (1, 0), (1, 12), (0.97, 2)],
        "niquests": [(0.8, 0), (0.97, 0), (1, 0), (0.9, 0), (0.75, 0)],
        "go": [(1, 0), (1, 0), (0.975, 0), (0.9, 0), (1, 0)],
        "curl": [(0.6, 0), (0.5, 0), (1, 0), (0.9, 0), (0.4, 0)],
    }
    cells = []
    for name, _title, _lang in clients:
        for (scenario, _t, _k), (ok, dups) in zip(scenarios, plan[name], strict=True):
            cells.append(_cell(rng, name, scenario, ok=ok, dups=dups,
                               median=8.0 if name == "go" else 14.0,
                               attempts=1.0 + (0.2 if dups else 0.0)))
    return {
        "version": "h2guard.bench/1", "h2guard_version": "0.4.0",
        "created": "2026-12-01T14:40:00Z", "quick": True, "elapsed_s": 95.2,
        "machine": {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "cpus": 2,
                    "implementation": "CPython"},
        "scenarios": [{"name": n, "title": t, "kind": k,
                       "description": f"The server injects {t} while the clients send POSTs.",
                       "source": "measured on nginx 1.22 and an AWS ALB (see docs/bench.md)",
                       "workload": {"requests": 120, "concurrency": 20, "waves": 3, "gap_s": 0.5,
                                    "methods": {"POST": 80, "GET": 40}}}
                      for n, t, k in scenarios],
        "clients": [{"name": n, "title": t, "language": lang, "version": "1.0",
                     "available": True, "reason": None} for n, t, lang in clients]
        + [{"name": "okhttp", "title": "OkHttp 3 (HTTP/2)", "language": "Java", "version": None,
            "available": False, "reason": "libokhttp-java not installed: make peers"}],
        "cells": cells,
        "verdict": "h2guard completed every request in every scenario without a duplicate; "
                   "the naive retry loop hides failures by writing orders twice <b>&amp</b>.",
    }


# ---------------------------------------------------------------------------------------------
# Chromium


def _run_chromium(args: list[str], out: Path, *, timeout: float = 60.0) -> str:
    """Run Chromium with stdout to ``out``; return its stderr. Fail the test on a hang."""
    err_path = out.with_suffix(".stderr")
    with out.open("wb") as stdout, err_path.open("wb") as stderr:
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait(timeout=10)
            pytest.fail(f"chromium did not finish within {timeout} s and was killed: {args}\n"
                        f"{err_path.read_text(errors='replace')[-3000:]}")
        finally:
            _kill_group(proc)  # helpers it left behind, in its own group only
    stderr_text = err_path.read_text(errors="replace")
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {args}\n{stderr_text[-3000:]}"
    return stderr_text


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _flags(profile: Path) -> list[str]:
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--hide-scrollbars", "--force-device-scale-factor=1",
            f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    chromium = _chromium_path()
    work = tmp_path_factory.mktemp("bench-report")
    page = work / "report.html"
    page.write_text(render_html(sample_result()), encoding="utf-8")
    return chromium, work, page


# ---------------------------------------------------------------------------------------------
# A small PNG decoder (8-bit RGB / RGBA, non-interlaced: what Chromium writes)


def decode_png(data: bytes) -> tuple[int, int, int, bytes]:
    """(width, height, channels, pixels): raw rows of ``channels`` bytes per pixel."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _comp, _filter, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(bytes(idat))
    assert len(raw) == height * (stride + 1)
    out = bytearray(height * stride)
    prev = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        ftype = raw[start]
        line = bytearray(raw[start + 1:start + 1 + stride])
        if ftype == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif ftype == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif ftype == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif ftype == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert ftype == 0, f"bad filter type {ftype}"
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return width, height, bpp, bytes(out)


def _colour_counts(pixels: bytes, bpp: int) -> Counter[bytes]:
    if bpp == 3:
        return Counter(pixels[i:i + 3] for i in range(0, len(pixels), 3))
    return Counter(pixels[i:i + 3] for i in range(0, len(pixels), 4))


def _near(counts: Counter[bytes], hex_colour: str, tolerance: int = 6) -> int:
    """Pixels within ``tolerance`` per channel of the colour (antialiasing, blending)."""
    target = bytes.fromhex(hex_colour.lstrip("#"))
    return sum(n for rgb, n in counts.items()
               if all(abs(a - b) <= tolerance for a, b in zip(rgb, target, strict=True)))


def _blend(hex_colour: str, opacity: float, background: str = "#f6f7f9") -> str:
    """The colour a translucent mark shows over a lane's background."""
    fg, bg = bytes.fromhex(hex_colour.lstrip("#")), bytes.fromhex(background.lstrip("#"))
    return "".join(f"{round(f * opacity + b * (1 - opacity)):02x}" for f, b in zip(fg, bg,
                                                                                 strict=True))


# ---------------------------------------------------------------------------------------------


class _Counter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[str, dict[str, int]] = {}
        self.cells: list[dict[str, str | None]] = []
        self._svg: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg":
            self._svg = a.get("id") or ""
            self.ids[self._svg] = Counter()
        elif self._svg is not None:
            self.ids[self._svg][tag] += 1
        if tag == "td" and "data-scenario" in a:
            self.cells.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None


@pytest.mark.timeout(120)
def test_dom_after_rendering_has_grid_and_drawn_charts(report: tuple[str, Path, Path]) -> None:
    chromium, work, page = report
    dom_file = work / "dom.html"
    _run_chromium([chromium, *_flags(work / "profile-dom"), "--dump-dom", page.as_uri()],
                  dom_file)
    dom = dom_file.read_text(encoding="utf-8", errors="replace")
    assert 'id="scoreboard"' in dom, dom[:2000]
    parsed = _Counter()
    parsed.feed(dom)
    result = sample_result()
    assert len(parsed.cells) == 6 * 5
    classes = Counter(c for cell in parsed.cells for c in (cell.get("class") or "").split())
    assert classes["cell-ok"] > 0 and classes["cell-bad"] > 0 and classes["cell-dup"] == 3
    for scenario in result["scenarios"]:
        for prefix in ("latency", "timeline"):
            chart = parsed.ids.get(f"{prefix}-{scenario['name']}")
            assert chart is not None, f"{prefix}-{scenario['name']} missing"
            assert chart["rect"] > 0 and chart["line"] > 0 and chart["path"] > 0, chart
            assert chart["text"] > 3, chart
        assert parsed.ids[f"latency-{scenario['name']}"]["circle"] > 0
    assert "http://" not in re.sub(r"<p class=\"source\">.*?</p>", "", dom)


@pytest.mark.timeout(180)
def test_screenshot_shows_the_coloured_grid_and_charts(report: tuple[str, Path, Path]) -> None:
    chromium, work, page = report
    png = work / "report.png"
    _run_chromium([chromium, *_flags(work / "profile-shot"), f"--screenshot={png}",
                   page.as_uri()], work / "shot.stdout")
    assert png.exists() and png.stat().st_size > 10_000, "no screenshot written"
    width, height, bpp, pixels = decode_png(png.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    counts = _colour_counts(pixels, bpp)
    found = {name: _near(counts, COLOURS[name]) for name in ("ok", "warn", "bad", "dup")}
    # latency dots are drawn at 60 % opacity: a lone dot shows the blend, a pile darker blues
    found["dot"] = _near(counts, _blend(COLOURS["dot"], 0.6), tolerance=12) + _near(
        counts, _blend(COLOURS["dot"], 0.84), tolerance=12)
    found["p99"] = _near(counts, COLOURS["p99"], tolerance=20)
    found["goaway"] = _near(counts, FAULT_COLOURS["goaway"], tolerance=40)
    found["refused"] = _near(counts, FAULT_COLOURS["max_concurrent_streams"], tolerance=40)
    found["error"] = _near(counts, COLOURS["error"], tolerance=40)
    print(f"\nscreenshot {png}: pixels per colour {found}")
    for name in ("ok", "warn", "bad"):
        assert found[name] > 2000, (name, found)
    for name in ("dup", "dot", "goaway", "refused", "error"):
        assert found[name] > 500, (name, found)
    assert found["p99"] > 250, found  # 3-unit bars, one chart in the window
    # a page, not a blank sheet: white and the background are not all there is
    top = counts.most_common(2)
    assert sum(n for _rgb, n in top) < 0.9 * width * height, top
