"""The broker's configuration: where the templates are, how they are filled in, the plugins.

The templates are the deployment's own (``infra/mosquitto``, copied into the wheel), filled
in the way the deployment fills them (Python `string.Template`, ``${name}`` on non-comment
lines), so the harness runs exactly the configuration production runs.
"""

from __future__ import annotations

import fcntl
import os
import string
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from amora_devtools._errors import ServiceStartError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["amora_auth_plugin", "dynsec_plugin", "plugin_source_dir", "render_template", "template_dir"]

_BUILD_TIMEOUT = 300.0
_BUILD_PACKAGES = "gcc make mosquitto-dev libmosquitto-dev libcjson-dev libssl-dev"


def template_dir() -> Path:
    """Where the mosquitto configuration templates are.

    ``AMORA_MOSQUITTO_TEMPLATES`` if set, else the copy inside an installed wheel, else
    the repository's ``infra/mosquitto``.
    """
    override = os.environ.get("AMORA_MOSQUITTO_TEMPLATES")
    if override:
        return Path(override)
    packaged = Path(__file__).resolve().parent / "mosquitto"
    if (packaged / "mosquitto.conf.template").is_file():
        return packaged
    return Path(__file__).resolve().parents[2] / "infra" / "mosquitto"


def dynsec_plugin() -> str:
    """Path of mosquitto's dynamic-security plugin (``AMORA_MOSQUITTO_DYNSEC_PLUGIN`` overrides).

    Raises:
        ServiceStartError: It is not installed.
    """
    override = os.environ.get("AMORA_MOSQUITTO_DYNSEC_PLUGIN")
    if override:
        return override
    name = "mosquitto_dynamic_security.so"
    found = [
        *sorted(Path("/usr/lib").glob(f"*/{name}")),
        *[p for p in (Path("/usr/lib") / name, Path("/usr/local/lib") / name) if p.exists()],
    ]
    if not found:
        raise ServiceStartError("mosquitto", "mosquitto_dynamic_security.so not found (apt-get install mosquitto)")
    return str(found[0])


def plugin_source_dir() -> Path | None:
    """The repository's ``infra/broker-plugin`` (the amora_auth.so sources), or None in a wheel."""
    source = Path(__file__).resolve().parents[2] / "infra" / "broker-plugin"
    return source if (source / "Makefile").is_file() else None


def amora_auth_plugin() -> Path:
    """Path of the broker-token plugin ``amora_auth.so``, built first when needed.

    ``AMORA_AUTH_PLUGIN`` names a prebuilt one (an image's, a packaged one). Otherwise
    ``make`` runs in the repository's ``infra/broker-plugin`` (incremental: nothing to do
    when the build is current; serialised by a lock so parallel test processes do not
    build over each other) and its ``build/amora_auth.so`` is returned.

    Raises:
        ServiceStartError: The named file does not exist, there are no sources to build
            from, or the build failed (make's output, and the apt packages it needs).
    """
    override = os.environ.get("AMORA_AUTH_PLUGIN")
    if override:
        if not Path(override).is_file():
            raise ServiceStartError("mosquitto", f"AMORA_AUTH_PLUGIN={override} does not exist")
        return Path(override)
    source = plugin_source_dir()
    if source is None:
        raise ServiceStartError(
            "mosquitto", "amora_auth.so: no infra/broker-plugin sources here; set AMORA_AUTH_PLUGIN to a built one"
        )
    build = source / "build"
    build.mkdir(exist_ok=True)
    with (build / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                ["make", "-s", "-C", str(source)],  # noqa: S607 - make from PATH, as a developer runs it
                capture_output=True,
                text=True,
                timeout=_BUILD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceStartError(
                "mosquitto", f"building amora_auth.so failed ({exc}): apt-get install {_BUILD_PACKAGES}"
            ) from exc
    if result.returncode != 0:
        raise ServiceStartError(
            "mosquitto",
            f"building amora_auth.so failed (make exited {result.returncode}): apt-get install {_BUILD_PACKAGES}",
            log_tail=(result.stdout + result.stderr)[-4000:],
        )
    return build / "amora_auth.so"


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Fill ``${name}`` placeholders; comment lines are copied as they are."""
    out = []
    try:
        for line in template.splitlines():
            keep = line.lstrip().startswith("#")
            out.append(line if keep else string.Template(line).substitute(values))
    except (KeyError, ValueError) as exc:
        raise ServiceStartError("mosquitto", f"bad configuration template: {exc!r}") from exc
    return "\n".join(out) + "\n"
