"""The broker's configuration: where the templates are, how they are filled in, the plugin.

The templates are the deployment's own (``infra/mosquitto``, copied into the wheel), filled
in the way the deployment fills them (Python `string.Template`, ``${name}`` on non-comment
lines), so the harness runs exactly the configuration production runs.
"""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import TYPE_CHECKING

from amora_devtools._errors import ServiceStartError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["dynsec_plugin", "render_template", "template_dir"]


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
