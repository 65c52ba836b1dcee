"""The ``h2guard`` command. It wires subcommands to the parts and holds no logic of its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from h2guard import __version__

app = typer.Typer(
    name="h2guard",
    help="Make HTTP/2 stream resets boring: reproduce them (chaos), survive them (client), "
         "diagnose them (doctor).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=False,
)
chaos_app = typer.Typer(
    help="An HTTP/2 server and reverse proxy that injects the failures load balancers and "
         "proxies cause in production: RST_STREAM, GOAWAY, idle timeouts, stream limits, "
         "flow-control stalls.",
    no_args_is_help=True,
)
app.add_typer(chaos_app, name="chaos")
_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


@app.command()
def version() -> None:
    """Print the h2guard version."""
    print(__version__)


@chaos_app.command("serve")
def chaos_serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one (read the URL line).")]
    = 8443,
    h2c: Annotated[bool, typer.Option(
        "--h2c", help="Cleartext HTTP/2 with prior knowledge (HTTP/1.1 on the same port) "
                      "instead of TLS with ALPN.")] = False,
    profile: Annotated[str | None, typer.Option(
        help="A middlebox profile: aws-alb, nginx, ... (see `h2guard chaos profiles`).")]
    = None,
    scenario: Annotated[Path | None, typer.Option(
        help="A scenario TOML file of faults (see the README for the format).")] = None,
    time_scale: Annotated[float, typer.Option(
        help="Multiply every scenario duration: 0.01 turns a 60 s idle timeout into 0.6 s.")]
    = 1.0,
    seed: Annotated[int | None, typer.Option(
        help="Seed for every random choice (probabilities, jitter): runs repeat exactly.")]
    = None,
    events: Annotated[str | None, typer.Option(
        help="Append every event as a JSON line to this file ('-': stdout). Without it, "
             "injected faults go to stdout.")] = None,
    upstream: Annotated[str | None, typer.Option(
        help="Reverse-proxy to this URL (http:// HTTP/1.1, https:// ALPN, h2c:// prior "
             "knowledge) with faults applied in front.")] = None,
    control_port: Annotated[int | None, typer.Option(
        help="Serve the HTTP control API (faults, ledger, events, /metrics) on this port.")]
    = None,
    control_host: Annotated[str, typer.Option(
        help="Address of the control API; a non-loopback one needs --allow-remote-control.")]
    = "127.0.0.1",
    allow_remote_control: Annotated[bool, typer.Option(
        "--allow-remote-control",
        help="Let the control API listen beyond loopback (anyone who reaches it can change "
             "faults).")] = False,
    cert: Annotated[Path | None, typer.Option(help="Your TLS certificate (PEM).")] = None,
    key: Annotated[Path | None, typer.Option(help="Your TLS private key (PEM).")] = None,
    ca_dir: Annotated[Path | None, typer.Option(
        help="Write the generated CA to DIR/ca.pem (default: a temporary folder).")] = None,
    honour_idempotency_keys: Annotated[bool, typer.Option(
        "--honour-idempotency-keys",
        help="POST /orders with an Idempotency-Key seen before replays the first response "
             "and records no new effect (a stand-in for a server with key support).")] = False,
    duration: Annotated[float | None, typer.Option(
        help="Stop by itself after this many seconds.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Print only the URL line.")] = False,
) -> None:
    """Serve HTTP/2 with faults injected. The first line printed is the URL.

    Endpoints: GET|POST /echo, GET /bytes/N, GET /delay/MS, GET /status/CODE, POST /orders
    (one side effect in the ledger), GET /ledger. Ctrl-C stops cleanly and prints a summary.
    """
    from h2guard.chaos.run import RunOptions, run
    from h2guard.chaos.scenario import ScenarioError, resolve
    from h2guard.chaos.server import ServerConfig

    if (cert is None) != (key is None):
        raise _fail("--cert and --key go together")
    if time_scale <= 0:
        raise _fail("--time-scale must be above 0")
    if h2c and cert is not None:
        raise _fail("--h2c serves cleartext: drop --cert/--key, or drop --h2c")
    try:
        chosen = resolve(profile, str(scenario) if scenario is not None else None)
    except ScenarioError as exc:
        raise _fail(str(exc)) from None
    config = ServerConfig(host=host, port=port, h2c=h2c, time_scale=time_scale, seed=seed,
                          certfile=str(cert) if cert else None,
                          keyfile=str(key) if key else None, upstream=upstream,
                          control_port=control_port, control_host=control_host,
                          control_allow_remote=allow_remote_control,
                          ca_dir=str(ca_dir) if ca_dir else None,
                          honour_idempotency_keys=honour_idempotency_keys)
    code = run(RunOptions(scenario=chosen, config=config, events_path=events, quiet=quiet,
                          duration=duration))
    raise typer.Exit(code)


@chaos_app.command("profiles")
def chaos_profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the middlebox profiles, one line each."""
    from h2guard.chaos.scenario import list_profiles, scenario_to_dict

    profiles = list_profiles()
    if as_json:
        print(json.dumps([scenario_to_dict(p) for p in profiles], indent=2))
        return
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        print(f"{p.name:<{width}}  {p.description}")


@chaos_app.command("check")
def chaos_check(
    scenario: Annotated[Path, typer.Argument(help="The scenario TOML file to validate.")],
) -> None:
    """Validate a scenario file and say what it will do."""
    from h2guard.chaos.scenario import ScenarioError, load_scenario

    try:
        loaded = load_scenario(scenario)
    except ScenarioError as exc:
        raise _fail(str(exc)) from None
    print(f"{scenario}: ok — scenario {loaded.name!r}, {len(loaded.faults)} fault(s)")
    for fault in loaded.faults:
        print(f"  - {fault.kind}" + (f" ({fault.name})" if fault.name else ""))


@chaos_app.command("demo")
def chaos_demo() -> None:
    """Reproduce "stream was reset" against plain httpx, then fix it, with no server to install.

    Runs a few middlebox set-ups in-process (a tightened nginx, an AWS ALB idle timeout, a
    reset after the app ran), drives httpx with HTTP/2 at each, and prints what failed, why,
    and what the server's ledger says was really written; then the same traffic through
    h2guard.AsyncClient on a fresh server with the same faults, and a before/after table.
    """
    import asyncio

    from h2guard.chaos.demo import run_demo

    asyncio.run(run_demo())


def main() -> None:
    """Console-script entry point."""
    app()
