"""The ``amora-agent`` command: ``run --config FILE``, ``check-config``, ``keygen`` and ``enrol``."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import structlog

from amora_agent._build import agent_from_config
from amora_agent._config import AgentConfig, load_config
from amora_agent._enrol import EnrolmentError, enrol, keygen
from amora_agent._errors import AgentError, ConfigError
from amora_agent._logging import configure_logging
from amora_agent._sdnotify import SystemdNotifier
from amora_agent._telemetry import configure_process

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

EXIT_FAILURE = 1
EXIT_CONFIG = 2  # systemd's RestartPreventExitStatus: a bad config does not heal by restarting


def _config_paths(files: Sequence[str], directories: Sequence[str]) -> list[Path]:
    paths = [Path(f) for f in files]
    for directory in directories:
        found = sorted(Path(directory).glob("*.toml"))
        if not found:
            raise ConfigError(f"no *.toml in {directory}", key="--config-dir")
        paths += found
    if not paths:
        raise ConfigError("give --config FILE (or --config-dir DIR)")
    return paths


async def _run(paths: Sequence[Path]) -> int:
    configs = [load_config(path) for path in paths]
    configure_logging(configs[0].log_level.value)
    log = structlog.get_logger("amora_agent")
    # One exporter set-up per process: the first configuration's [telemetry] table.
    telemetry = configure_process(
        configs[0].telemetry,
        device_id=configs[0].device_id,
        version=metadata.version("amora-device-agent"),
        logger=log,
    )
    try:
        return await _run_agents(configs, log)
    finally:
        telemetry.shutdown()


async def _run_agents(configs: Sequence[AgentConfig], log: structlog.typing.FilteringBoundLogger) -> int:
    agents = [agent_from_config(config, logger=log) for config in configs]
    loop = asyncio.get_running_loop()
    systemd = SystemdNotifier(logger=log)
    watchdog: asyncio.Task[None] | None = None

    def stop_all() -> None:
        systemd.notify("STOPPING=1")
        if watchdog is not None:
            watchdog.cancel()
        for agent in agents:
            agent.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_all)
    log.info("agents starting", devices=[c.device_id for c in configs][:20], count=len(agents))
    # Several configurations = several agents in one event loop (simulated fleets).
    async with asyncio.TaskGroup() as group:
        for agent in agents:
            group.create_task(agent.run(), name=f"amora-agent[{agent.device_id}]")
        # Ready = configuration, keys and TLS loaded and the agents running (each then keeps
        # trying its brokers; a broker that is down is no reason for systemd to give up).
        systemd.notify("READY=1", f"STATUS=running {len(agents)} agent(s)")
        if systemd.watchdog_interval_s is not None:
            watchdog = group.create_task(systemd.pet_watchdog(), name="amora-agent.systemd-watchdog")
    return 0


def _add_enrolment_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keygen = commands.add_parser(
        "keygen", help="make the keys and CSR the configuration names (mode 0600); print the registration body"
    )
    keygen.add_argument("--config", required=True, help="TOML configuration file")
    enrol = commands.add_parser("enrol", help="register this player with a one-time claim; write its certificate")
    enrol.add_argument("--config", required=True, help="TOML configuration file")
    enrol.add_argument("--authz-url", required=True, help="the authz service, e.g. https://authz.example.net")
    source = enrol.add_mutually_exclusive_group(required=True)
    source.add_argument("--claim", help="the claim from your administrator")
    source.add_argument("--claim-file", help="a file holding the claim (keeps it out of the process list)")
    enrol.add_argument("--run", action="store_true", help="then run the agent")
    commands.add_parser("example-config", help="print an annotated example configuration (agent.toml.example)")


def _enrolment_command(args: argparse.Namespace) -> int:
    """``keygen`` / ``enrol``; errors are raised to `main`, which reports them in one line."""
    if args.command == "example-config":
        sys.stdout.write(resources.files("amora_agent").joinpath("agent.toml.example").read_text())
        return 0
    config = load_config(args.config)
    if args.command == "keygen":
        sys.stdout.write(msgspec.json.encode(keygen(config)).decode() + "\n")
        return 0
    claim = args.claim if args.claim is not None else _read_claim(args.claim_file)
    serial = enrol(config, claim=claim, authz_url=args.authz_url)
    sys.stdout.write(f"enrolled {config.device_id}: certificate {serial} in {config.tls.cert_file}\n")
    sys.stdout.flush()
    return asyncio.run(_run([Path(args.config)])) if args.run else 0


def _read_claim(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the claim file {path}: {exc.strerror}", key="--claim-file") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line and run; returns the process exit status."""
    parser = argparse.ArgumentParser(prog="amora-agent", description="Amora player agent.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {metadata.version('amora-device-agent')}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the agent until SIGTERM")
    run.add_argument(
        "--config",
        action="append",
        default=[],
        help="TOML configuration file; repeat it to run several agents in one process",
    )
    run.add_argument(
        "--config-dir",
        action="append",
        default=[],
        help="run one agent per *.toml in this directory (simulated fleets)",
    )
    check = commands.add_parser("check-config", help="load the configuration and exit")
    check.add_argument("--config", required=True, help="TOML configuration file")
    _add_enrolment_commands(commands)
    args = parser.parse_args(argv)
    try:
        if args.command in {"keygen", "enrol", "example-config"}:
            return _enrolment_command(args)
        if args.command == "check-config":
            config = load_config(args.config)
            config.signing_key()
            config.trusted_keys()
            config.encryption_key()
            sys.stdout.write(f"ok: {config.device_id}\n")
            return 0
        return asyncio.run(_run(_config_paths(args.config, args.config_dir)))
    except ConfigError as exc:
        sys.stderr.write(f"amora-agent: {exc}\n")
        return EXIT_CONFIG
    except EnrolmentError as exc:
        sys.stderr.write(f"amora-agent: {exc}\n")
        # A refused claim does not heal by retrying; an unreachable service may.
        return EXIT_CONFIG if exc.status is not None and exc.status < 500 else EXIT_FAILURE
    except AgentError as exc:  # e.g. the state directory: may heal, so systemd restarts
        sys.stderr.write(f"amora-agent: {exc}\n")
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
