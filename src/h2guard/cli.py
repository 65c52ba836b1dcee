"""The ``h2guard`` command. It wires subcommands to the parts and holds no logic of its own.

It needs the CLI extra (typer, rich): the console script enters through
:mod:`h2guard._console`, which says so in one line when they are missing. Shell completion is
typer's: ``h2guard --install-completion`` (bash, zsh, fish, PowerShell) or
``h2guard --show-completion`` to print the script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from h2guard import __version__

app = typer.Typer(
    name="h2guard",
    help="Make HTTP/2 stream resets boring: reproduce them (chaos), survive them (client), "
         "diagnose them (doctor), and score clients against them (bench).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    add_completion=True,
)
chaos_app = typer.Typer(
    help="An HTTP/2 server and reverse proxy that injects the failures load balancers and "
         "proxies cause in production: RST_STREAM, GOAWAY, idle timeouts, stream limits, "
         "flow-control stalls.",
    no_args_is_help=True,
)
app.add_typer(chaos_app, name="chaos")
doctor_app = typer.Typer(
    help="Diagnose HTTP/2 resets: probe an endpoint's limits (probe), show every frame "
         "(trace), explain a client's error message (explain), check what a proxy does with "
         "each failure (middlebox).",
    no_args_is_help=True,
)
app.add_typer(doctor_app, name="doctor")
_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def _check_port(flag: str, value: int | None) -> None:
    """Ports are checked here rather than with typer's min/max, whose error is a boxed
    multi-line usage panel; this one is one line, exit code 2 all the same."""
    if value is not None and not 0 <= value <= 65535:
        raise _fail(f"{flag} {value}: a port is 0..65535 (0 picks a free one)")


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print the h2guard version and exit.")] = False,
) -> None:
    """The options before any command (``--version``); the help text is ``app``'s."""


@app.command()
def version() -> None:
    """Print the h2guard version (the same as --version)."""
    print(__version__)


@chaos_app.command("serve")
def chaos_serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(
        help="Port, 0..65535; 0 picks a free one (read it from the URL line).")] = 8443,
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
        help="Serve the HTTP control API (faults, ledger, events, /metrics) on this port, "
             "0..65535 (0 picks a free one). It only answers requests addressed to it "
             "(Host, Origin) and POSTs with Content-Type: application/json, so a web page "
             "cannot drive it.")] = None,
    control_host: Annotated[str, typer.Option(
        help="Address of the control API; a non-loopback one needs --allow-remote-control.")]
    = "127.0.0.1",
    allow_remote_control: Annotated[bool, typer.Option(
        "--allow-remote-control",
        help="Let the control API listen beyond loopback: anyone who reaches it can change "
             "faults and reset the ledger, so also set --control-token (without one a "
             "warning is printed).")] = False,
    control_token: Annotated[str | None, typer.Option(
        envvar="H2GUARD_CONTROL_TOKEN", show_envvar=True, show_default=False,
        help="Require 'Authorization: Bearer TOKEN' on every control API request but "
             "GET /health (e.g. TOKEN=$(openssl rand -hex 16)). Prefer the environment "
             "variable: a command line is visible to other local users.")] = None,
    cert: Annotated[Path | None, typer.Option(
        help="Your TLS certificate chain (PEM), instead of a generated CA; needs --key.")]
    = None,
    key: Annotated[Path | None, typer.Option(
        help="The private key of --cert (PEM, not encrypted).")] = None,
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

    With --control-port, change faults while it runs: curl --json '{"kind": "rst_stream",
    "code": "CANCEL"}' localhost:PORT/faults (older curl: -H 'content-type:
    application/json' -d '...'). GET / on the control port lists its endpoints.

    A start-up problem is one line on stderr, before any URL: exit code 2 for a bad option
    or file, 1 for an address that cannot be bound.
    """
    from h2guard.chaos.control import check_token
    from h2guard.chaos.run import RunOptions, run
    from h2guard.chaos.scenario import ScenarioError, resolve
    from h2guard.chaos.server import ServerConfig

    _check_port("--port", port)
    _check_port("--control-port", control_port)
    if (cert is None) != (key is None):
        raise _fail("--cert and --key go together")
    if control_token is not None:
        try:
            check_token(control_token)
        except ValueError as exc:
            raise _fail(f"--control-token / H2GUARD_CONTROL_TOKEN: {exc}") from None
        source = ctx.get_parameter_source("control_token")  # quiet when set in the env
        if control_port is None and source is not None and source.name == "COMMANDLINE":
            _err.print("[yellow]warning: --control-token does nothing without "
                       "--control-port[/]", soft_wrap=True, highlight=False)
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
                          control_token=control_token,
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


def _register_doctor() -> None:
    from h2guard.doctor.cli import register

    register(doctor_app)


_register_doctor()


def _register_bench() -> None:
    from h2guard.bench.cli import register

    register(app)


_register_bench()


def main() -> None:
    """Console-script entry point."""
    app()
