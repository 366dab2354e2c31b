"""Logins at scale: a restart storm of stored sessions, first logins, and the periodic reconcile's cost.

Three scenarios against a real mosquitto (TLS, dynamic security) whose account file holds as
many session accounts as the scenario says (written into the file before the broker starts:
creating them one command at a time is the very cost measured here):

- ``login_storm``: ``apps`` apps restart at once and resume their stored sessions
  (``docs/decisions/0013-logins-resume-and-reconcile-cost.md``): each connects with its
  stored credential (TLS, username and password), subscribes to its device's state and
  waits for the retained state. Figure: seconds until every app has it, and that the
  broker's account file was not written. Baseline in the same run: what fresh logins would
  cost the broker alone (its measured ``createClient`` rate at this file size).
- ``first_login``: new installs logging in through the real authz service
  (``POST /v1/sessions``, ``clients`` at once, each a user with a device) while the broker
  holds ``live`` other session accounts. Baseline in the same run: the broker's bare
  ``createClient`` rate at that size (the ceiling, one file rewrite per login).
- ``first_login_token``: the same in token mode (`amora_bench.token_logins`): ``live``
  sessions made through the service and all connected with their broker tokens (that
  connect is the token-mode restart storm), then the same first logins; the dynsec figure
  above is its baseline.
- ``reconcile_cost``: the authz service's periodic pass at each of ``sessions``: a full
  pass and the cheap check that replaced it in steady state, each with the broker's longest
  stall meanwhile (a probe in its own process publishing to itself every millisecond).

Run alone: ``python -m amora_bench.logins --apps 300 --live 1000 --sessions 1000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_bench._common import broker_for_bench, raise_fd_limit
from amora_bench._dynsec_files import FILLER, MANAGED, dynsec_rate, group, hashed, preload, session_account
from amora_bench._login_parts import authz_service, bearer_tokens, install_window, storm
from amora_bench._rawmqtt import RawMqtt
from amora_bench.reconcile_cost import reconcile_cost
from amora_bench.token_logins import first_login_token, summary_rows

if TYPE_CHECKING:
    from collections.abc import Callable


__all__ = ["dynsec_options", "first_login", "first_login_token", "login_storm", "reconcile_cost", "run"]

STATE_TOPIC = "amora/devices/bench-1/state"


def dynsec_options(*, live: int = 10_000) -> dict[str, Any]:
    """What each way of giving logins broker accounts costs the broker, at ``live`` accounts.

    One connection, each message awaited: ``createClient`` alone (a login today), twenty in
    one message (batching), ``addGroupClient`` of a pre-created account (a pool), and a new
    user's group with five roles inline against ``createGroup`` plus five ``addGroupRole``.
    """
    from amora_devtools.dynsec import DYNSEC_TOPIC  # noqa: PLC0415

    with broker_for_bench() as broker:
        names = [f"sess.{i:032x}" for i in range(live)]
        preload(
            broker,
            clients=[session_account(n, "p") for n in names],
            groups=[group("user:bench", names[: live // 2])],
            roles=[{"rolename": f"user-device:bench-{i}", "textname": MANAGED, "acls": []} for i in range(5)],
        )
        tag = secrets.token_hex(4)
        with broker.admin_client(timeout=120) as admin:
            admin.subscribe(f"{DYNSEC_TOPIC}/response")

            def timed(*messages: list[dict[str, Any]]) -> float:
                began = time.perf_counter()
                for commands in messages:
                    admin.publish(DYNSEC_TOPIC, json.dumps({"commands": commands}).encode(), qos=1)
                    if admin.receive(timeout=120) is None:
                        msg = "no dynsec answer within 120 s"
                        raise RuntimeError(msg)
                return time.perf_counter() - began

            def create(i: int, kind: str) -> dict[str, Any]:
                name = f"sess.{kind}{tag}{i:016d}"
                return {"command": "createClient", "username": name, "password": "x", "textname": MANAGED}

            single = timed(*[[create(i, "a")] for i in range(20)])
            batch = timed([create(i, "b") for i in range(20)])
            pool = timed(
                *[[{"command": "addGroupClient", "groupname": "user:bench", "username": n}] for n in names[-20:]]
            )
            roles = [{"rolename": f"user-device:bench-{i}"} for i in range(5)]
            inline = timed(
                *[[{"command": "createGroup", "groupname": f"user:in{tag}{i}", "roles": roles}] for i in range(4)]
            )
            separate = timed(
                *[
                    [{"command": "createGroup", "groupname": f"user:sep{tag}{i}"}]
                    + [{"command": "addGroupRole", "groupname": f"user:sep{tag}{i}", **r} for r in roles]
                    for i in range(4)
                ]
            )
        return {
            "live_sessions": live,
            "dynsec_file_mb": round(broker.dynsec_file.stat().st_size / 1e6, 2),
            "createClient_per_s": round(20 / single, 1),
            "createClient_20_in_one_message_per_s": round(20 / batch, 1),
            "pool_addGroupClient_per_s": round(20 / pool, 1),
            "new_user_group_5_roles_inline_ms": round(inline / 4 * 1000, 1),
            "new_user_group_5_roles_separate_ms": round(separate / 4 * 1000, 1),
        }


# ---------------------------------------------------------------- restart storm


def login_storm(*, apps: int = 5000, known: int = 5000) -> dict[str, Any]:
    """``apps`` of ``known`` stored sessions restart at once and resume (see the module doc)."""
    from amora_devtools.broker import dynsec  # noqa: PLC0415

    raise_fd_limit()
    with broker_for_bench() as broker:
        passwords = {f"sess.{i:032x}": secrets.token_urlsafe(32) for i in range(known)}
        preload(
            broker,
            clients=[session_account(n, p) for n, p in passwords.items()]
            + [
                {
                    "username": "bench-device",
                    "textname": "bench",
                    "roles": [{"rolename": "bench-device"}],
                    **hashed("d"),
                }
            ],
            groups=[group("user:bench", passwords, roles=["bench-watch"])],
            roles=[
                {
                    "rolename": "bench-watch",
                    "textname": MANAGED,
                    "acls": [
                        {"acltype": "subscribePattern", "topic": STATE_TOPIC, "priority": 0, "allow": True},
                        {"acltype": "publishClientReceive", "topic": STATE_TOPIC, "priority": 0, "allow": True},
                    ],
                },
                {
                    "rolename": "bench-device",
                    "acls": [{"acltype": "publishClientSend", "topic": STATE_TOPIC, "priority": 0, "allow": True}],
                },
            ],
        )
        size_mb = round(broker.dynsec_file.stat().st_size / 1e6, 2)
        rate = dynsec_rate(broker, group="user:bench")

        async def publish_state() -> None:
            device = await RawMqtt.connect(
                broker.host,
                broker.app_port,
                ssl_context=broker.client_context(),
                client_id="bench-device",
                username="bench-device",
                password="d",  # noqa: S106 - a throwaway account on a throwaway broker
            )
            # Retained, QoS 0: the flag is the PUBLISH packet's bit 0.
            topic = STATE_TOPIC.encode()
            body = len(topic).to_bytes(2, "big") + topic + b"\x00" + b"signed-state"
            device.writer.write(bytes([0x31, len(body)]) + body)
            await device.writer.drain()
            await asyncio.sleep(0.2)
            device.close()

        asyncio.run(publish_state())
        dynsec(broker, [{"command": "listClients", "count": 1}])
        mtime = broker.dynsec_file.stat().st_mtime_ns
        chosen = list(passwords.items())[:apps]
        figures = asyncio.run(storm(broker, [(n, n, p, STATE_TOPIC) for n, p in chosen]))
        fresh_s = round(apps / rate, 1) if rate else None
        return {
            "apps": apps,
            "known_sessions": known,
            "dynsec_file_mb": size_mb,
            "resume": figures,
            "broker_file_written": broker.dynsec_file.stat().st_mtime_ns != mtime,
            "baseline_createClient_per_s": rate,
            "baseline_fresh_logins_s": fresh_s,
            "ratio_resume_vs_fresh": round(figures["all_received_s"] / fresh_s, 3) if fresh_s else None,
            "target_s": 30,
        }


# ---------------------------------------------------------------- first logins


async def _logins(url: str, users: list[str], seconds: float) -> dict[str, Any]:
    import httpx  # noqa: PLC0415 - only this scenario speaks HTTP

    from amora_authz.testing import session_body  # noqa: PLC0415

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        tokens = await bearer_tokens(http, users)
        admin = tokens["admin"]
        keys = session_body()
        (await http.post("/v1/admin/devices", json={"device_id": "bench-1", **keys}, headers=admin)).raise_for_status()
        for user in users:
            (await http.put(f"/v1/admin/users/{user}/devices/bench-1", headers=admin)).raise_for_status()
        return await install_window(http, tokens, users, seconds)


def first_login(*, live: int = 10_000, clients: int = 8, seconds: float = 10.0) -> dict[str, Any]:
    """New installs through the real authz service with ``live`` other sessions on the broker."""
    raise_fd_limit()
    with broker_for_bench() as broker, tempfile.TemporaryDirectory(prefix="amora-bench-logins-") as tmp:
        preload(broker, clients=[session_account(f"sess.{i:032x}", "p", textname=FILLER) for i in range(live)])
        size_mb = round(broker.dynsec_file.stat().st_size / 1e6, 2)
        ceiling = dynsec_rate(broker)
        users = [f"install{i}" for i in range(clients)]
        with authz_service(Path(tmp), broker, users) as url:
            figures = asyncio.run(_logins(url, users, seconds))
        return {
            "live_sessions": live,
            "clients": clients,
            "dynsec_file_mb": size_mb,
            **figures,
            "baseline_createClient_per_s": ceiling,
            "ratio_vs_broker_ceiling": round(figures["logins_per_s"] / ceiling, 3) if ceiling else None,
            "target_per_s": 100,
        }


def summary(figures: dict[str, Any]) -> str:
    """The key figures as Markdown, each target marked met or missed."""
    storm, first, cost = figures["login_storm"], figures["first_login"], figures["reconcile_cost"]
    options = figures.get("dynsec_options")
    took = storm["resume"]["all_received_s"]
    met = "met" if took <= storm["target_s"] and not storm["resume"]["failures"] else "MISSED"
    rate = first["logins_per_s"]
    lines = [
        "| figure | value | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|",
        (
            f"| restart storm: {storm['apps']:,} apps resume ({storm['known_sessions']:,} sessions known), "
            f"all holding their state | {took} s, {storm['resume']['failures']} failed, broker file written: "
            f"{storm['broker_file_written']} | fresh logins at the broker's createClient rate "
            f"({storm['baseline_createClient_per_s']}/s): {storm['baseline_fresh_logins_s']} s "
            f"| {storm['ratio_resume_vs_fresh']} | <= 30 s: {met} |"
        ),
        (
            f"| first logins, {first['live_sessions']:,} live sessions, {first['clients']} at once "
            f"| {rate}/s (p50 {first['latency_ms']['p50_ms']} ms) | broker createClient ceiling "
            f"{first['baseline_createClient_per_s']}/s | {first['ratio_vs_broker_ceiling']} "
            f"| >= 100/s: {'met' if rate >= first['target_per_s'] else 'MISSED'} |"
        ),
    ]
    lines += [
        (
            f"| periodic pass, {p['sessions']:,} sessions: cheap check (max of 5) | {p['check_ms']['max_ms']} ms, "
            f"broker stall {p['check_broker_longest_stall_ms']} ms | full pass {p['full_pass_ms']} ms, broker "
            f"stall {p['full_pass_broker_longest_stall_ms']} ms | {p['ratio_check_vs_full']} | no stall |"
        )
        for p in cost["points"]
    ]
    if options:
        lines.append(
            f"| broker, {options['live_sessions']:,} accounts: createClient alone / 20 in one message / pool "
            f"addGroupClient | {options['createClient_per_s']}/s / {options['createClient_20_in_one_message_per_s']}/s"
            f" / {options['pool_addGroupClient_per_s']}/s | new user's group, 5 roles inline "
            f"{options['new_user_group_5_roles_inline_ms']} ms vs separate "
            f"{options['new_user_group_5_roles_separate_ms']} ms | | |"
        )
    if figures.get("first_login_token"):
        lines += summary_rows(figures["first_login_token"], first)
    return "\n".join(lines)


def run(  # noqa: PLR0913 - each scenario's size, all keyword-only
    *,
    apps: int = 5000,
    known: int = 5000,
    live: int = 10_000,
    seconds: float = 10.0,
    sessions: list[int] | None = None,
    options: bool = True,
    tokens: bool = True,
) -> dict[str, Any]:
    """The scenarios (the runner's entry point).

    ``options`` adds `dynsec_options`; ``tokens`` the same first logins in token mode
    (`amora_bench.token_logins`, all ``live`` sessions connected).
    """
    figures: dict[str, Any] = {
        "dynsec_options": dynsec_options(live=live) if options else None,
        "login_storm": login_storm(apps=apps, known=known),
        "first_login": first_login(live=live, seconds=seconds),
        "first_login_token": first_login_token(live=live, seconds=seconds) if tokens else None,
        "reconcile_cost": reconcile_cost(sessions=sessions),
    }
    figures["summary"] = summary(figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios and print their figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--apps", type=int, default=300, help="apps restarting at once")
    parser.add_argument("--known", type=int, default=None, help="stored sessions the broker holds (default: --apps)")
    parser.add_argument("--live", type=int, default=1000, help="other sessions the broker holds during first logins")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long first logins run")
    parser.add_argument("--sessions", default="1000", help="comma-separated session counts for the reconcile cost")
    parser.add_argument(
        "--only", choices=["login_storm", "first_login", "first_login_token", "reconcile_cost", "dynsec_options"]
    )
    args = parser.parse_args(argv)
    sessions = [int(n) for n in args.sessions.split(",")]
    known = args.known or args.apps
    jobs: dict[str, Callable[[], dict[str, Any]]] = {
        "login_storm": lambda: login_storm(apps=args.apps, known=max(known, args.apps)),
        "first_login": lambda: first_login(live=args.live, seconds=args.seconds),
        "first_login_token": lambda: first_login_token(live=args.live, seconds=args.seconds),
        "reconcile_cost": lambda: reconcile_cost(sessions=sessions),
        "dynsec_options": lambda: dynsec_options(live=args.live),
    }
    figures = {name: job() for name, job in jobs.items() if args.only in (None, name)}
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
