"""The external clients of ``h2guard bench``: Go, Java, OkHttp, Node and curl, run for real.

A resilience scoreboard is only worth something if the clients on it are the real libraries,
used the way a service uses them: no Python imitation of Go's retry rules can say what Go does.
So each client is a small driver program in its own language (``drivers/<name>/``) that reads a
JSON spec, runs its waves of requests with the library's defaults and prints one JSON line per
request as it completes. This module is the Python side of that protocol:

* :func:`probe` says quickly whether a client can run here (its runtime, compiler, jars) and,
  when it cannot, what to install: it never builds and never raises;
* :func:`prepare` builds a driver once per source and toolchain version (the Go binary, the Java
  classes) into ``$XDG_CACHE_HOME/h2guard/bench`` so that a scoreboard run pays for the
  compilers once, not per scenario;
* :func:`run` starts the prepared driver on a spec and collects its records, validated, calling
  ``on_record`` as each arrives; a driver that crashes, rejects the spec, prints garbage or
  hangs past ``limit_s`` becomes a :class:`DriverRun` with a ``problem``, never an exception,
  and never a process left behind (each driver runs in its own process group, killed whole).

curl is not a program of ours: it is the curl command line itself, ``curl --parallel`` on one
config file per wave, read back through ``--write-out '%{json}'`` (see :func:`_run_curl`).

The driver protocol (fixed; the bench runner depends on it): one argument, the spec's path; one
stdout line per request ``{"id", "status", "error", "start", "end", "bytes", "protocol"}``
(``status`` null when no response arrived, ``error`` the library's own text, null on success;
both set when a response's body broke off), then ``{"done": true, "client", "version"}`` and
exit 0; a bad spec is a message on stderr and exit 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EXTERNAL_CLIENTS", "DriverInfo", "DriverRun", "cache_dir", "prepare", "probe",
           "run"]

EXTERNAL_CLIENTS: tuple[str, ...] = ("go", "java", "okhttp", "node", "curl")

SOURCES = Path(__file__).with_name("drivers")
"""The drivers' sources: ``go/main.go``, ``java/*.java``, ``okhttp/OkHttpDriver.java``,
``node/driver.js``."""

JAVA_SHARE = Path("/usr/share/java")
"""Where Debian's libokhttp-java puts ``okhttp.jar`` and ``okio.jar``."""

INSTALL = "`make peers` (scripts/install-peers.sh) installs"
"""How every reason says what to do: the peers script installs each runtime that is missing."""

_TITLES: dict[str, tuple[str, str]] = {
    "go": ("Go net/http (HTTP/2)", "Go"),
    "java": ("Java java.net.http.HttpClient (HTTP/2)", "Java"),
    "okhttp": ("OkHttp 3 (HTTP/2)", "Java"),
    "node": ("Node.js http2 (one shared session)", "JavaScript"),
    "curl": ("curl --parallel --http2 (one process per wave)", "C (curl)"),
}

_PROBE_TIMEOUT = 10.0
"""A ``--version`` that takes longer than this is a broken runtime, not a slow one."""
_BUILD_TIMEOUT = 300.0
_REASON_LINES = 6
"""How many lines of a compiler's complaint a reason quotes."""
_LINE_LIMIT = 1 << 20
"""Longest stdout line read (a record is ~200 bytes; an error text can be long)."""
_STDERR_TAIL = 2048
_STDERR_HEAD = 4096
_CURL_PARALLEL_MAX = 300
"""curl refuses ``--parallel-max`` above 300."""
_JAVA_MIN, _NODE_MIN = 11, 18
"""java.net.http needs Java 11; ``AbortSignal.timeout`` needs Node 17.3 (18 is the LTS)."""


@dataclass(frozen=True, slots=True)
class DriverInfo:
    """Whether a client can run here, which version, and if not, what is missing and how to
    get it (``reason`` names the package)."""

    name: str
    title: str
    language: str
    available: bool
    version: str | None
    reason: str | None


@dataclass(slots=True)
class DriverRun:
    """What one run of a driver produced.

    ``records`` are the per-request lines that passed validation, one per request id at most
    (requests never reported are simply absent: the runner counts them failed). ``returncode``
    is None when the run was killed at its limit; ``problem`` says, in one line, what went
    wrong with the driver itself (not with the requests), or is None.
    """

    records: list[dict[str, object]] = field(default_factory=list)
    version: str | None = None
    returncode: int | None = None
    stderr_tail: str = ""
    problem: str | None = None


# ---------------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/h2guard/bench`` (``~/.cache/h2guard/bench`` without it): the built
    drivers and Go's build cache, reused across runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "h2guard" / "bench"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------- probing


def _info(name: str, *, version: str | None = None, reason: str | None = None) -> DriverInfo:
    title, language = _TITLES.get(name, (name, "?"))
    return DriverInfo(name, title, language, reason is None, version, reason)


def _output(args: Sequence[str]) -> str | None:
    """stdout then stderr of a quick ``--version``-style command, or None if it failed."""
    try:
        done = subprocess.run(list(args), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=_PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return (done.stdout + done.stderr).decode(errors="replace")


def _go() -> tuple[str | None, str | None, str | None]:
    """(path of go, its version, reason it cannot be used)."""
    go = shutil.which("go")
    if go is None:
        return None, None, f"go not found: {INSTALL} golang-go"
    text = _output([go, "version"])
    found = re.search(r"\bgo(\d+)\.(\d+)(\.\d+)?\S*", text or "")
    if found is None:
        return go, None, f"`{go} version` failed or said nothing recognisable: reinstall " \
                         f"golang-go"
    if (int(found.group(1)), int(found.group(2))) < (1, 19):
        return go, found.group(0), f"{found.group(0)} is too old: the driver needs Go 1.19 " \
                                   f"or newer ({INSTALL} golang-go)"
    return go, found.group(0), None


@dataclass(frozen=True, slots=True)
class _Jdk:
    java: str
    javac: str | None
    version: str


def _java_version(java: str) -> str | None:
    """The JDK's ``release`` file next to the real binary (no JVM started); else
    ``java -version``."""
    with contextlib.suppress(OSError):
        release = Path(os.path.realpath(java)).parent.parent / "release"
        found = re.search(r'^JAVA_VERSION="([^"]+)"', release.read_text(), re.MULTILINE)
        if found:
            return found.group(1)
    text = _output([java, "-version"])
    found = re.search(r'version "([^"]+)"', text or "")
    return found.group(1) if found else None


def _java_major(version: str) -> int:
    parts = version.split(".")
    with contextlib.suppress(ValueError):
        major = int(parts[0])
        return int(parts[1]) if major == 1 and len(parts) > 1 else major
    return 0


def _jdk() -> tuple[_Jdk | None, str | None]:
    """The java runtime and the javac of the same JDK, or why there is none."""
    java = shutil.which("java")
    if java is None:
        return None, f"java not found: {INSTALL} default-jdk-headless"
    version = _java_version(java)
    if version is None:
        return None, f"`{java} -version` failed: reinstall default-jdk-headless"
    if _java_major(version) < _JAVA_MIN:
        return None, (f"java {version} is too old: the drivers need Java {_JAVA_MIN} or newer "
                      f"({INSTALL} default-jdk-headless)")
    sibling = Path(os.path.realpath(java)).with_name("javac")
    javac = str(sibling) if os.access(sibling, os.X_OK) else shutil.which("javac")
    return _Jdk(java, javac, version), None


def _okhttp_jars() -> tuple[list[Path], str | None, str | None]:
    """(classpath jars, OkHttp version, reason they cannot be used)."""
    okhttp, okio = JAVA_SHARE / "okhttp.jar", JAVA_SHARE / "okio.jar"
    missing = [str(p) for p in (okhttp, okio) if not p.is_file()]
    if missing:
        return [], None, f"{' and '.join(missing)} not found: {INSTALL} libokhttp-java"
    version = None
    with contextlib.suppress(OSError, KeyError, zipfile.BadZipFile), \
            zipfile.ZipFile(okhttp) as jar:
        found = re.search(rb"okhttp/(\d+\.\d+\.\d+)",
                          jar.read("okhttp3/internal/Version.class"))
        if found:
            version = found.group(1).decode()
    if version is None:
        return [], None, f"{okhttp} holds no okhttp3.internal.Version: reinstall libokhttp-java"
    if not version.startswith("3."):
        return [], version, f"OkHttp {version} found: the driver is written for OkHttp 3"
    return [okhttp, okio], version, None


def _node() -> tuple[str | None, str | None, str | None]:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        return None, None, f"node not found: {INSTALL} nodejs"
    text = (_output([node, "--version"]) or "").strip()
    found = re.fullmatch(r"v(\d+)\.\d+\.\d+\S*", text)
    if found is None:
        return node, None, f"`{node} --version` failed: reinstall nodejs"
    if int(found.group(1)) < _NODE_MIN:
        return node, text, (f"node {text} is too old: the driver needs Node {_NODE_MIN} or "
                            f"newer")
    return node, text, None


def _curl() -> tuple[str | None, str | None, str | None]:
    curl = shutil.which("curl")
    if curl is None:
        return None, None, f"curl not found: {INSTALL} curl"
    text = _output([curl, "--version"]) or ""
    found = re.match(r"curl (\d+)\.(\d+)\.(\d+)", text)
    if found is None:
        return curl, None, f"`{curl} --version` failed: reinstall curl"
    version = f"curl {found.group(1)}.{found.group(2)}.{found.group(3)}"
    features = re.search(r"^Features:(.*)$", text, re.MULTILINE)
    if features is None or "HTTP2" not in features.group(1).split():
        return curl, version, f"{version} was built without HTTP2 (nghttp2): install Debian's curl"
    if tuple(int(g) for g in found.groups()) < (7, 70, 0):
        return curl, version, f"{version} is too old: the adapter needs %{{json}} (curl 7.70+)"
    return curl, version, None


def probe(name: str) -> DriverInfo:
    """Whether client ``name`` can run here: its runtime (and compiler) present and recent
    enough. Fast (``--version`` calls at most), never builds, never raises."""
    try:
        return _probe(name)
    except Exception as exc:  # a probe must never take the scoreboard down
        return _info(name, reason=f"probing {name} failed: {exc!r}")


def _probe(name: str) -> DriverInfo:
    if name == "go":
        _, version, reason = _go()
        return _info(name, version=version, reason=reason)
    if name in ("java", "okhttp"):
        jdk, reason = _jdk()
        if jdk is None:
            return _info(name, reason=reason)
        if jdk.javac is None:
            return _info(name, version=jdk.version,
                         reason=f"javac not found (a JRE without its JDK): {INSTALL} "
                                f"default-jdk-headless")
        if name == "java":
            return _info(name, version=jdk.version)
        _, okhttp_version, reason = _okhttp_jars()
        version = f"okhttp {okhttp_version}" if okhttp_version else None
        return _info(name, version=version, reason=reason)
    if name == "node":
        _, version, reason = _node()
        if reason is None and not (SOURCES / "node" / "driver.js").is_file():
            reason = f"{SOURCES / 'node' / 'driver.js'} is missing: reinstall h2guard"
        return _info(name, version=version, reason=reason)
    if name == "curl":
        _, version, reason = _curl()
        return _info(name, version=version, reason=reason)
    return _info(name, reason=f"unknown client {name!r}: bench knows "
                              f"{', '.join(EXTERNAL_CLIENTS)}")


# ---------------------------------------------------------------------------------- building


def _first_lines(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    head = lines[:_REASON_LINES]
    if len(lines) > _REASON_LINES:
        head.append(f"... ({len(lines) - _REASON_LINES} more lines)")
    return "\n".join(head) or "(no output)"


def _build(kind: str, key: str, build: Callable[[Path], list[str]], *, cwd: Path,
           env: Mapping[str, str] | None = None) -> tuple[Path | None, str | None]:
    """Build into a fresh directory next to the cache entry, then rename it into place:
    concurrent builders (two bench runs) never see a half-built driver. Returns the entry's
    path, or None and the compiler's first lines."""
    root = cache_dir()
    final = root / f"{kind}-{key}"
    if (final / ".complete").is_file():
        return final, None
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{kind}-", dir=root))
    try:
        args = build(work)
        try:
            done = subprocess.run(args, cwd=cwd, env=None if env is None else dict(env),
                                  stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=_BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return None, f"{args[0]} did not finish within {_BUILD_TIMEOUT:g} s"
        except OSError as exc:
            return None, f"cannot run {args[0]}: {exc}"
        if done.returncode != 0:
            out = (done.stderr + done.stdout).decode(errors="replace")
            return None, f"{Path(args[0]).name} failed (exit {done.returncode}):\n" \
                         f"{_first_lines(out)}"
        (work / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        try:
            work.rename(final)
        except OSError:
            if not (final / ".complete").is_file():  # not a concurrent builder's win
                shutil.rmtree(final, ignore_errors=True)
                work.rename(final)
        return final, None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _prepare_go() -> tuple[DriverInfo, list[str] | None]:
    go, version, reason = _go()
    if go is None or version is None or reason is not None:
        return _info("go", version=version, reason=reason), None
    source = SOURCES / "go" / "main.go"
    key = _digest(source.read_bytes(), version, os.path.realpath(go))
    cache = cache_dir()
    env = dict(os.environ)
    env.update(GOCACHE=str(cache / "go-build"), GOPATH=str(cache / "gopath"),
               GOPROXY="off", GOFLAGS="", GOWORK="off", GOTOOLCHAIN="local",
               GO111MODULE="off")  # a one-file program of the standard library: no modules
    # no -trimpath: it would rebuild the standard library instead of using Go 1.19's
    # precompiled one (35 s instead of 1 s on two cores)
    path, error = _build("go", key,
                         lambda out: [go, "build", "-o", str(out / "h2guard-bench-go"),
                                      "main.go"],
                         cwd=source.parent, env=env)
    if path is None:
        return _info("go", version=version, reason=f"building the Go driver: {error}"), None
    return _info("go", version=version), [str(path / "h2guard-bench-go")]


def _prepare_java(name: str) -> tuple[DriverInfo, list[str] | None]:
    info = _probe(name)
    jdk, _ = _jdk()
    if not info.available or jdk is None or jdk.javac is None:
        return info, None
    javac = jdk.javac
    shared = sorted((SOURCES / "java").glob("*.java"))
    jars: list[Path] = []
    if name == "java":
        sources, main = shared, "JavaDriver"
    else:
        jars, _, _ = _okhttp_jars()
        sources = [SOURCES / "okhttp" / "OkHttpDriver.java",
                   *(p for p in shared if p.name != "JavaDriver.java")]
        main = "OkHttpDriver"
    parts: list[bytes | str] = [jdk.version, os.path.realpath(javac)]
    for p in sources:
        parts += [p.name, p.read_bytes()]
    for jar in jars:
        st = jar.stat()
        parts += [str(jar.resolve()), str(st.st_size), str(st.st_mtime_ns)]
    classpath = os.pathsep.join(str(j) for j in jars)

    def command(out: Path) -> list[str]:
        args = [javac, "-encoding", "UTF-8", "-nowarn", "-d", str(out / "classes")]
        if classpath:
            args += ["-cp", classpath]
        return [*args, *(str(p) for p in sources)]

    path, error = _build(name, _digest(*parts), command, cwd=SOURCES)
    if path is None:
        return _info(name, version=info.version,
                     reason=f"building the {name} driver: {error}"), None
    run_cp = os.pathsep.join([str(path / "classes"), *(str(j) for j in jars)])
    return info, [jdk.java, "-cp", run_cp, main]


def _prepare(name: str) -> tuple[DriverInfo, list[str] | None]:
    """The driver's info and the command that runs it (the spec path goes last), built if
    needed; no command when it cannot run."""
    if name == "go":
        return _prepare_go()
    if name in ("java", "okhttp"):
        return _prepare_java(name)
    info = _probe(name)
    if not info.available:
        return info, None
    if name == "node":
        node, _, _ = _node()
        assert node is not None
        return info, [node, str(SOURCES / "node" / "driver.js")]
    if name == "curl":
        curl, _, _ = _curl()
        assert curl is not None
        return info, [curl]
    return info, None


def _prepare_safely(name: str) -> tuple[DriverInfo, list[str] | None]:
    try:
        return _prepare(name)
    except Exception as exc:  # e.g. an unwritable cache directory
        return _info(name, reason=f"preparing {name} failed: {exc!r}"), None


def prepare(name: str) -> DriverInfo:
    """:func:`probe`, then build the driver if it is not in the cache yet (keyed by a hash of
    its sources and the toolchain's version). A build that fails makes the client unavailable
    with the compiler's first lines as the reason. Never raises."""
    return _prepare_safely(name)[0]


# ---------------------------------------------------------------------------------- records


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _validate(obj: object) -> dict[str, object] | str:
    """A record in its canonical shape, or why the line is not one."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    rid, status, error = obj.get("id"), obj.get("status"), obj.get("error")
    start, end = _number(obj.get("start")), _number(obj.get("end"))
    size, protocol = obj.get("bytes"), obj.get("protocol")
    if not isinstance(rid, str) or not rid:
        return "id is not a non-empty string"
    if status is not None and (isinstance(status, bool) or not isinstance(status, int)):
        return "status is neither an integer nor null"
    if error is not None and not isinstance(error, str):
        return "error is neither a string nor null"
    if status is None and error is None:
        return "neither a status nor an error"
    if start is None or end is None:
        return "start or end is not a number"
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        return "bytes is not a non-negative integer"
    if protocol is not None and not isinstance(protocol, str):
        return "protocol is neither a string nor null"
    record: dict[str, object] = {"id": rid, "status": status, "error": error, "start": start,
                                 "end": end, "bytes": size}
    if "protocol" in obj:
        record["protocol"] = protocol
    return record


def _spec_ids(spec: Mapping[str, object]) -> list[list[str]]:
    """The request ids of each wave, as far as the spec has them (a bad spec has fewer)."""
    waves = spec.get("waves")
    out: list[list[str]] = []
    if isinstance(waves, list | tuple):
        for wave in waves:
            ids: list[str] = []
            if isinstance(wave, list | tuple):
                for item in wave:
                    if isinstance(item, Mapping) and isinstance(item.get("id"), str):
                        ids.append(item["id"])
            out.append(ids)
    return out


class _Collector:
    """Validates stdout lines into records, one per expected id, calling ``on_record``."""

    def __init__(self, expected: Sequence[str],
                 on_record: Callable[[dict[str, object]], None] | None) -> None:
        self.expected = set(expected)
        self.total = len(self.expected)
        self.records: list[dict[str, object]] = []
        self.seen: set[str] = set()
        self.on_record = on_record
        self.version: str | None = None
        self.done = False
        self.rejected = 0
        self.first_rejected: str | None = None

    def reject(self, line: str, why: str) -> None:
        self.rejected += 1
        if self.first_rejected is None:
            self.first_rejected = f"{why}: {line[:200]!r}"

    def line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except ValueError:
            self.reject(text, "not JSON")
            return
        if isinstance(obj, dict) and obj.get("done") is True:
            self.done = True
            version = obj.get("version")
            self.version = version if isinstance(version, str) else None
            return
        self.add(obj, text)

    def add(self, obj: object, text: str) -> None:
        record = _validate(obj)
        if isinstance(record, str):
            self.reject(text, record)
            return
        rid = record["id"]
        assert isinstance(rid, str)
        if rid not in self.expected:
            self.reject(text, "an id the spec does not have")
            return
        if rid in self.seen:
            self.reject(text, "a second record for the same id")
            return
        self.seen.add(rid)
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(record)

    @property
    def missing(self) -> int:
        return self.total - len(self.seen)

    def note(self) -> str | None:
        if not self.rejected:
            return None
        return f"ignored {self.rejected} malformed stdout line(s), first: {self.first_rejected}"


# ---------------------------------------------------------------------------------- processes


@dataclass(slots=True)
class _Exit:
    returncode: int | None  # None: killed at the deadline
    stderr_head: str
    stderr_tail: str

    def first_error_line(self) -> str:
        for line in self.stderr_head.splitlines():
            if line.strip():
                return line.strip()[:300]
        return "(nothing on stderr)"


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _supervise(args: Sequence[str], on_line: Callable[[bytes], None],
                     deadline: float) -> _Exit:
    """Run ``args`` in its own process group, feeding each stdout line to ``on_line``, until
    it exits or the loop clock reaches ``deadline``; then SIGKILL the whole group, always
    (nothing it started outlives it). Raises only what ``on_line`` raises, after the kill."""
    loop = asyncio.get_running_loop()
    proc = await asyncio.create_subprocess_exec(
        *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=_LINE_LIMIT)
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    head, tail = bytearray(), bytearray()

    async def read_stdout() -> None:
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # longer than _LINE_LIMIT: skipped, noted as malformed
                on_line(b"<a line longer than 1 MiB>")
                continue
            if not line:
                return
            on_line(line)

    async def read_stderr() -> None:
        while chunk := await stderr.read(65536):
            if len(head) < _STDERR_HEAD:
                head.extend(chunk[: _STDERR_HEAD - len(head)])
            tail.extend(chunk)
            del tail[:-_STDERR_TAIL]

    out_task = asyncio.ensure_future(read_stdout())
    err_task = asyncio.ensure_future(read_stderr())
    killed = False
    try:
        done, _ = await asyncio.wait({out_task}, timeout=max(0.0, deadline - loop.time()))
        if out_task in done and out_task.exception() is None:
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                killed = True  # closed its stdout but kept running
        elif out_task not in done:
            killed = True
    finally:
        _kill_group(proc)
        # what it had written before the kill is still in the pipe: take it, briefly
        await asyncio.wait({out_task, err_task}, timeout=1.0)
        for task in (out_task, err_task):
            if not task.done():  # a grandchild kept the pipe open: do not wait for it
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
    failure = None if out_task.cancelled() else out_task.exception()
    if failure is not None:
        raise failure  # on_record's own bug (or ours): surface it, the driver is dead already
    return _Exit(None if killed else proc.returncode,
                 head.decode(errors="replace"), tail.decode(errors="replace"))


def _problem(who: str, ended: _Exit, collector: _Collector, limit_s: float) -> str | None:
    """One line on what went wrong with the driver itself, or None."""
    notes: list[str] = []
    total, missing = collector.total, collector.missing
    rc = ended.returncode
    if rc is None:
        notes.append(f"killed after {limit_s:g} s with {missing} of {total} requests "
                     f"unreported")
    elif rc == 2 and not collector.records:
        notes.append(f"{who} rejected the spec (exit 2): {ended.first_error_line()}")
    elif rc < 0:
        try:
            signame = signal.Signals(-rc).name
        except ValueError:
            signame = f"signal {-rc}"
        notes.append(f"{who} died of {signame} before reporting {missing} of {total} "
                     f"requests: {ended.first_error_line()}")
    elif rc != 0:
        if missing:
            notes.append(f"{who} exited {rc} before reporting {missing} of {total} requests: "
                         f"{ended.first_error_line()}")
        else:
            notes.append(f"{who} exited {rc}: {ended.first_error_line()}")
    elif missing:
        notes.append(f"{who} finished without reporting {missing} of {total} requests")
    elif not collector.done:
        notes.append(f"{who} exited 0 without its done line")
    note = collector.note()
    if note:
        notes.append(note)
    return "; ".join(notes) or None


async def run(name: str, spec: Mapping[str, object], *,
              on_record: Callable[[dict[str, object]], None] | None = None,
              limit_s: float) -> DriverRun:
    """Run client ``name`` on ``spec`` (the driver protocol's JSON, see the module docstring)
    and collect its records, calling ``on_record`` for each valid one as it arrives.

    The driver is prepared first (built if needed, in a worker thread; the build does not count
    against ``limit_s``); then it gets ``limit_s`` seconds of wall clock, after which its whole
    process group is killed. Driver failures become :attr:`DriverRun.problem`; only
    programming errors raise (an unknown client, a spec that is not JSON-serialisable, an
    exception from ``on_record``)."""
    if name not in EXTERNAL_CLIENTS:
        raise ValueError(f"unknown client {name!r}: one of {', '.join(EXTERNAL_CLIENTS)}")
    if not limit_s > 0:
        raise ValueError(f"limit_s must be above 0, got {limit_s!r}")
    text = json.dumps(spec)  # TypeError for a spec that is not JSON: the caller's bug
    if name == "curl":
        return await _run_curl(spec, on_record=on_record, limit_s=limit_s)
    info, command = await asyncio.to_thread(_prepare_safely, name)
    if command is None:
        return DriverRun(version=info.version, problem=f"{name} unavailable: {info.reason}")
    collector = _Collector([i for wave in _spec_ids(spec) for i in wave], on_record)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="h2guard-bench-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(text)
        try:
            ended = await _supervise([*command, str(path)], collector.line,
                                     loop.time() + limit_s)
        except OSError as exc:  # the binary vanished since it was prepared, say
            return DriverRun(version=info.version,
                             problem=f"cannot start the {name} driver: {exc}")
    return DriverRun(collector.records, collector.version or None, ended.returncode,
                     ended.stderr_tail, _problem(f"the {name} driver", ended, collector, limit_s))


# ---------------------------------------------------------------------------------- curl


@dataclass(frozen=True, slots=True)
class _Req:
    id: str
    method: str
    path: str
    body_size: int


@dataclass(frozen=True, slots=True)
class _CurlSpec:
    url: str
    ca_file: str
    concurrency: int
    timeout_s: float
    gap_s: float
    waves: tuple[tuple[_Req, ...], ...]


_SAFE = re.compile(r"[^\x00-\x1f\x7f]+")


def _curl_spec(spec: Mapping[str, object]) -> _CurlSpec | str:
    """The spec checked as strictly as the drivers check theirs, or why it is bad."""
    url, ca, conc = spec.get("url"), spec.get("ca_file"), spec.get("concurrency")
    timeout, gap, waves = _number(spec.get("timeout_s")), _number(spec.get("gap_s")), \
        spec.get("waves")
    if not isinstance(url, str) or not url.startswith("https://") or url.endswith("/") \
            or not _SAFE.fullmatch(url):
        return f"url must be an https:// origin without a trailing slash, got {url!r}"
    if not isinstance(ca, str) or not ca or not _SAFE.fullmatch(ca):
        return "ca_file must be a path"
    if not Path(ca).is_file():
        return f"cannot read ca_file {ca}"
    if isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
        return "concurrency must be an integer of at least 1"
    if timeout is None or timeout <= 0:
        return "timeout_s must be a number above 0"
    if gap is None or gap < 0:
        return "gap_s must be a number of at least 0"
    if not isinstance(waves, list | tuple):
        return "waves must be a list of lists of requests"
    out: list[tuple[_Req, ...]] = []
    for w, wave in enumerate(waves):
        if not isinstance(wave, list | tuple):
            return f"waves[{w}] must be a list of requests"
        reqs: list[_Req] = []
        for i, item in enumerate(wave):
            where = f"waves[{w}][{i}]"
            if not isinstance(item, Mapping):
                return f"{where} must be an object"
            rid, method, path, size = (item.get("id"), item.get("method"), item.get("path"),
                                       item.get("body_size"))
            if not isinstance(rid, str) or not rid or not _SAFE.fullmatch(rid):
                return f"{where}: id must be a non-empty string without control characters"
            if not isinstance(method, str) or not re.fullmatch(r"[A-Za-z]+", method):
                return f"{where}: method must be a word"
            if not isinstance(path, str) or not path.startswith("/") \
                    or not _SAFE.fullmatch(path):
                return f"{where}: path must start with /"
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                return f"{where}: body_size must be an integer of at least 0"
            reqs.append(_Req(rid, method.upper(), path, size))
        out.append(tuple(reqs))
    return _CurlSpec(url, ca, conc, timeout, gap, tuple(out))


def _quote(value: str) -> str:
    """A curl config file string (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _curl_config(spec: _CurlSpec, wave: Sequence[_Req], bodies: Path) -> str:
    """One block per request, separated by ``next``: curl resets every per-transfer option at
    ``next``, so each block carries its own (only --parallel and friends are global)."""
    blocks = []
    for req in wave:
        # globoff: a [ or { in a path is not a URL glob (one block, one transfer); noproxy:
        # the chaos server is on loopback, an https_proxy from the environment is not in it
        lines = [f"url = {_quote(spec.url + req.path)}", "globoff", 'noproxy = "*"', "http2",
                 f"cacert = {_quote(spec.ca_file)}", 'output = "/dev/null"',
                 f"max-time = {spec.timeout_s:.3f}", r'write-out = "%{json}\n"',
                 f"header = {_quote('x-request-id: ' + req.id)}"]
        if req.body_size > 0:
            body = bodies / f"body-{req.body_size}.bin"
            if not body.exists():
                body.write_bytes(b"x" * req.body_size)
            lines += ['header = "content-type: application/octet-stream"',
                      f"data-binary = {_quote('@' + str(body))}"]
            if req.method != "POST":  # --data-binary implies POST
                lines.append(f"request = {_quote(req.method)}")
        elif req.method == "HEAD":
            lines.append("head")
        elif req.method != "GET":
            lines.append(f"request = {_quote(req.method)}")
        blocks.append("\n".join(lines))
    return "\nnext\n".join(blocks) + "\n"


_CURL_PROTOCOLS = {"2": "h2", "1.1": "http/1.1", "1.0": "http/1.0", "3": "h3"}


class _CurlWave:
    """Turns one wave's ``%{json}`` lines into driver records (transfer ``urlnum`` is the
    request's index in the wave: one URL per config block)."""

    def __init__(self, wave: Sequence[_Req], collector: _Collector) -> None:
        self.wave = wave
        self.collector = collector
        self.reported: set[int] = set()

    def line(self, raw: bytes) -> None:
        end = time.time()
        text = raw.decode(errors="replace").strip()
        if not text:
            return
        try:
            obj = json.loads(text)
        except ValueError:
            self.collector.reject(text, "not JSON")
            return
        num = obj.get("urlnum") if isinstance(obj, dict) else None
        if not isinstance(num, int) or not 0 <= num < len(self.wave):
            self.collector.reject(text[:200], "a curl line without a known urlnum")
            return
        assert isinstance(obj, dict)
        code, exitcode = obj.get("http_code"), obj.get("exitcode")
        total = _number(obj.get("time_total")) or 0.0
        size = obj.get("size_download")
        message = obj.get("errormsg")
        status = code if isinstance(code, int) and not isinstance(code, bool) and code else None
        error: str | None = None
        if isinstance(exitcode, int) and exitcode != 0:
            error = f"curl: ({exitcode}) {message}" if message else f"curl: ({exitcode})"
        elif status is None:
            error = "curl: no response and no error"
        self.reported.add(num)
        record: dict[str, object] = {
            "id": self.wave[num].id, "status": status, "error": error, "start": end - total,
            "end": end, "bytes": size if isinstance(size, int) and size >= 0 else 0,
            "protocol": _CURL_PROTOCOLS.get(str(obj.get("http_version"))),
        }
        self.collector.add(record, text[:200])


async def _run_curl(spec: Mapping[str, object], *,
                    on_record: Callable[[dict[str, object]], None] | None,
                    limit_s: float) -> DriverRun:
    """The curl "driver": for each wave, one ``curl --parallel --parallel-max C`` process on a
    config file with a block per request (method, ``x-request-id``, the body from a file with
    ``--data-binary @file``, ``--max-time`` timeout_s, ``--write-out '%{json}'``), its lines
    mapped back to ids by ``urlnum``; ``start`` is the line's arrival minus curl's
    ``time_total``. A new process per wave means a new connection per wave: what a script
    calling curl gets. ``returncode`` is 0 when every wave's curl reported all its transfers
    (curl's own non-zero exit for failed transfers is then expected), else the failing
    curl's."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    info, command = await asyncio.to_thread(_prepare_safely, "curl")
    if command is None:
        return DriverRun(version=info.version, problem=f"curl unavailable: {info.reason}")
    parsed = _curl_spec(spec)
    collector = _Collector([i for wave in _spec_ids(spec) for i in wave], on_record)
    if isinstance(parsed, str):
        return DriverRun(version=info.version, returncode=2, stderr_tail=f"bad spec: {parsed}",
                         problem=f"the curl adapter rejected the spec (exit 2): bad spec: "
                                 f"{parsed}")
    tails: list[str] = []
    returncode: int | None = 0
    problem: str | None = None
    with tempfile.TemporaryDirectory(prefix="h2guard-bench-curl-") as tmp:
        folder = Path(tmp)
        for w, wave in enumerate(parsed.waves):
            if wave:
                config = folder / f"wave-{w}.curlrc"
                config.write_text(_curl_config(parsed, wave, folder))
                reader = _CurlWave(wave, collector)
                # -q first: ignore ~/.curlrc; the rest are global options
                args = [*command, "-q", "--parallel", "--parallel-max",
                        str(min(parsed.concurrency, _CURL_PARALLEL_MAX)),
                        "--no-progress-meter", "--config", str(config)]
                try:
                    ended = await _supervise(args, reader.line, deadline)
                except OSError as exc:
                    returncode, problem = None, f"cannot start curl: {exc}"
                    break
                if ended.stderr_tail:
                    tails.append(ended.stderr_tail)
                missing = len(wave) - len(reader.reported)
                if ended.returncode is None:
                    returncode = None
                    problem = f"killed after {limit_s:g} s with {collector.missing} of " \
                              f"{collector.total} requests unreported"
                    break
                if missing:
                    returncode = ended.returncode
                    problem = f"curl exited {ended.returncode} before reporting {missing} of " \
                              f"{len(wave)} requests of wave {w + 1}: " \
                              f"{ended.first_error_line()}"
                    break
            if w < len(parsed.waves) - 1 and parsed.gap_s > 0:
                left = deadline - loop.time()
                if left <= parsed.gap_s:
                    returncode = None
                    problem = f"killed after {limit_s:g} s with {collector.missing} of " \
                              f"{collector.total} requests unreported"
                    break
                await asyncio.sleep(parsed.gap_s)
    note = collector.note()
    if note:
        problem = f"{problem}; {note}" if problem else note
    stderr_tail = "".join(tails)[-_STDERR_TAIL:]
    return DriverRun(collector.records, info.version, returncode, stderr_tail, problem)
