"""A working container of a locally built image, run with ``buildah run`` on the host network.

``podman run`` cannot set rlimits in this sandbox, so the images run as ``buildah run
--isolation chroot``: each as the user, entrypoint and command its image declares.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amora_devtools._errors import DevtoolsError
from amora_devtools._proc import tail, wait_until
from amora_devtools.images import buildah, image_config

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["READY_S", "UID", "Container"]

UID = 10001  # every image runs as this uid (see infra/images)
READY_S = 120.0


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(0), []):
            found.append(child)
            queue.append(child)
    return found


@dataclass
class Container:
    """A working container of an image, its command run by ``buildah run`` (host network)."""

    name: str
    image: str
    log_file: Path
    container_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def create(self) -> None:
        """``buildah from`` the image (a copy of its tree: seconds with vfs)."""
        self.config = image_config(self.image)
        self.container_id = buildah("from", "--pull-never", "--name", f"amora-smoke-{self.name}-{uuid.uuid4().hex[:8]}",
                                    self.image).strip()  # fmt: skip

    def _run_argv(self, command: Sequence[str], *, env: Mapping[str, str], volumes: Sequence[str]) -> list[str]:
        exe = shutil.which("buildah") or "buildah"
        argv = [exe, "--storage-driver", "vfs", "run", "--isolation", "chroot", "--network", "host"]
        argv += ["--user", str(self.config.get("User") or "0")]
        for key, value in env.items():
            argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            argv += ["--volume", volume]
        return [*argv, self.container_id, "--", *command]

    def start(self, *, env: Mapping[str, str], volumes: Sequence[str]) -> None:
        """Run the image's ENTRYPOINT + CMD, as the image's USER, output to ``log_file``."""
        command = [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - argv built here from the image's config
                self._run_argv(command, env=env, volumes=volumes),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._env, self._volumes = dict(env), list(volumes)

    def alive(self) -> bool:
        """Whether its command still runs."""
        return self.process is not None and self.process.poll() is None

    def healthy(self) -> bool:
        """Run the image's HEALTHCHECK command in the container once; True on exit 0."""
        test = (self.config.get("Healthcheck") or {}).get("Test") or []
        if not test or test[0] != "CMD":
            raise DevtoolsError(f"{self.image} has no exec-form HEALTHCHECK")
        result = subprocess.run(  # noqa: S603 - argv built here from the image's config
            self._run_argv(test[1:], env=self._env, volumes=self._volumes),
            check=False,
            capture_output=True,
            timeout=60,
        )
        return result.returncode == 0

    def wait_healthy(self, *, timeout: float = READY_S) -> None:
        """Poll the HEALTHCHECK until it passes (bounded; fails early if the command died).

        Raises:
            DevtoolsError: It exited or stayed unhealthy (with its log).
        """
        if (
            wait_until(lambda: True if self.healthy() else None, timeout=timeout, interval=0.5, alive=self.alive)
            is None
        ):
            raise DevtoolsError(f"{self.name} not healthy (alive: {self.alive()}):\n{tail(self.log_file)}")

    def signal(self, signum: signal.Signals) -> None:
        """Send ``signum`` to the container's entrypoint (what ``docker kill -s`` would do).

        Raises:
            DevtoolsError: Nothing runs in it.
        """
        payload = self._payload()
        if not payload:
            raise DevtoolsError(f"nothing runs in {self.name}")
        os.kill(payload[0], signum)

    def _payload(self) -> list[int]:
        """The processes buildah run started in the container (not buildah's own helpers)."""
        if self.process is None:
            return []
        found = []
        for pid in _descendants(self.process.pid):
            with contextlib.suppress(OSError):
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if not comm.startswith(("buildah", "memfd:buildah")):
                    found.append(pid)
        return found

    def stop(self, *, timeout: float = 15.0) -> None:
        """SIGTERM to what runs inside, SIGKILL after ``timeout``; remove the container.

        ``buildah run`` does not forward SIGTERM (it kills its child), so the payload gets the
        signal directly, as a container runtime would deliver it, and buildah exits after it.
        """
        try:
            if self.process is not None and self.alive():
                for pid in self._payload()[:1]:  # the entrypoint; it stops its own children
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    for pid in [self.process.pid, *_descendants(self.process.pid)]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.process.wait(timeout=timeout)
        finally:
            if self.container_id:
                with contextlib.suppress(DevtoolsError):
                    buildah("rm", self.container_id)
                self.container_id = ""
