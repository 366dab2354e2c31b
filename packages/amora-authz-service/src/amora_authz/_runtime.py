"""Build the running service from :class:`Settings`: secrets, store, validators, brokers, loops.

:class:`AuthzRuntime` is an async context manager: entering it opens the store,
migrates, runs a first full reconcile and starts the background loops (periodic full
reconcile, session expiry sweep, retry of what a broker missed) in a task group;
leaving it stops them and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, Self

import httpx
import structlog

from amora_authz._backends import BackendRegistry
from amora_authz._brokerstats import BrokerStats
from amora_authz._brokertoken import BrokerTokenKey
from amora_authz._ca import DeviceCA
from amora_authz._devissuer import PATH as DEV_ISSUER_PATH
from amora_authz._devissuer import DevIssuer
from amora_authz._errors import AuthenticationError, AuthzError, ConfigError
from amora_authz._fleet import BrokerFleet
from amora_authz._jwt import Claims, OidcSettings, TokenValidator, peek
from amora_authz._keyfiles import read_private, write_private
from amora_authz._limits import RateLimiter
from amora_authz._service import AuthzService, session_password
from amora_authz._sessionlists import PUBLISHER_ACCOUNT, SessionListPublisher
from amora_authz._store import Store, open_store
from amora_authz._tasks import cancel_and_wait
from amora_authz._telemetry import Metrics, Telemetry
from amora_protocol import ProtocolError, SigningKey

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

    from amora_authz._config import Settings
    from amora_authz._store import Certificate

__all__ = ["AuthzRuntime", "TokenValidators", "load_signing_keys", "load_token_key"]


class TokenValidators:
    """One validator per trusted issuer, chosen by the token's (unverified) ``iss``."""

    def __init__(self, validators: list[TokenValidator], *, metrics: Metrics) -> None:
        """Index the validators by issuer."""
        self._by_issuer = {v.settings.issuer: v for v in validators}
        self._metrics = metrics

    async def validate(self, token: str) -> Claims:
        """Validate with the validator of the token's issuer.

        Raises:
            AuthenticationError: unknown issuer, or the token fails validation.
        """
        try:
            issuer = _issuer_of(token)
            validator = self._by_issuer.get(issuer) if issuer is not None else None
            if validator is None:
                _reject_issuer(issuer)
            return await validator.validate(token)
        except AuthenticationError as exc:
            self._metrics.inc("amora_authz_token_rejected_total", code=exc.code)
            raise


def _reject_issuer(issuer: str | None) -> NoReturn:
    raise AuthenticationError(f"tokens from issuer {issuer!r} are not accepted", code="invalid_issuer")


def _issuer_of(token: str) -> str | None:
    """The unverified ``iss`` of a compact JWT (only to pick the validator).

    Raises:
        AuthenticationError: the token cannot be decoded.
    """
    return peek(token).issuer()


def load_signing_keys(settings: Settings) -> list[SigningKey]:
    """Load the grant-signing keys, generating one into ``state_dir`` when none is set.

    Raises:
        ConfigError: a key file cannot be read, is accessible by group or others, or is not
            an Ed25519 PEM.
    """
    paths = [Path(name) for name in settings.signing_key_files]
    if not paths:
        path = Path(settings.state_dir) / "grant-signing-key.pem"
        if not path.exists():
            write_private(path, SigningKey.generate().to_pem())
        paths = [path]
    keys = []
    for path in paths:
        try:
            keys.append(SigningKey.from_pem(read_private(path, "grant-signing key")))
        except ProtocolError as exc:
            raise ConfigError(f"cannot load signing key {path}: {exc}") from exc
    return keys


def load_token_key(settings: Settings) -> BrokerTokenKey | None:
    """The broker token key in token mode (None in dynsec mode).

    Raises:
        ConfigError: no key file configured, or it is accessible by others, unreadable, or
            not an EC P-256 private key PEM.
    """
    broker = settings.broker
    path = broker.token_key_path()
    if path is None:
        return None
    return BrokerTokenKey.load(path, issuer=broker.token_issuer, audience=broker.token_audience)


def _session_secret(settings: Settings) -> bytes:
    path = Path(settings.session_secret_file or Path(settings.state_dir) / "session-secret")
    if not path.exists():
        if settings.session_secret_file:
            raise ConfigError(f"session secret file {path} does not exist")
        write_private(path, secrets.token_bytes(32))
    return read_private(path, "session secret")


class AuthzRuntime:
    """The running service's parts, built from settings."""

    service: AuthzService
    store: Store
    backends: BackendRegistry
    validators: TokenValidators
    dev_issuer: DevIssuer | None

    def __init__(
        self,
        settings: Settings,
        *,
        logger: structlog.typing.FilteringBoundLogger | None = None,
        on_crl_written: Callable[[Sequence[Certificate]], None] | None = None,
        background: bool = True,
        telemetry: Telemetry | None = None,
    ) -> None:
        """Prepare (nothing is opened until ``async with``).

        Args:
            settings: the configuration.
            logger: structured logger (the global structlog logger when None).
            on_crl_written: called with the revoked certificates after each CRL rewrite.
            background: run the periodic loops (tests may drive passes themselves).
            telemetry: metrics and traces (by default chosen from the environment, see
                :mod:`amora_authz._telemetry`); the runtime shuts down only one it made.
        """
        self.settings = settings
        self.log: structlog.typing.FilteringBoundLogger = logger or structlog.get_logger("amora_authz")
        self._own_telemetry = telemetry is None
        self.telemetry = telemetry if telemetry is not None else Telemetry()
        self.metrics: Metrics = self.telemetry.metrics
        self.limits = RateLimiter(settings.rate_limits, token_mode=settings.broker.tokens)
        self._on_crl_written = on_crl_written
        self._background = background
        self._stack = contextlib.AsyncExitStack()
        self._tasks: asyncio.TaskGroup | None = None
        self._stop = asyncio.Event()
        self.dev_issuer = None
        self.broker_stats: BrokerStats | None = None

    async def __aenter__(self) -> Self:
        """Open everything, reconcile once, start the loops."""
        try:
            await self._open()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def _open(self) -> None:
        settings = self.settings
        settings.broker.check()
        signing_keys = load_signing_keys(settings)
        tokens = load_token_key(settings)
        secret = _session_secret(settings)
        self.store = await open_store(settings.database_url)
        self._stack.push_async_callback(self.store.close)
        await self.store.migrate()
        http = httpx.AsyncClient(timeout=10.0)
        self._stack.push_async_callback(http.aclose)

        if settings.oidc is not None and settings.dev_issuer.enabled:
            # Users are keyed by `sub` alone: a development user "x" would become production user "x".
            raise ConfigError("the development issuer cannot be enabled beside [oidc]: their users would mix")
        validators: list[TokenValidator] = []
        admin_role = settings.oidc.admin_role if settings.oidc else "amora-admin"
        if settings.oidc is not None:
            validators.append(TokenValidator(settings.oidc, http))
        if settings.dev_issuer.enabled:
            issuer_url = settings.base_url + DEV_ISSUER_PATH
            self.dev_issuer = DevIssuer(
                key=DevIssuer.load_or_create_key(Path(settings.state_dir) / "dev-issuer-key.json"),
                issuer=issuer_url,
                audience=settings.dev_issuer.audience,
                users=settings.dev_issuer.users,
                admins=settings.dev_issuer.admins,
                ttl_s=settings.dev_issuer.token_ttl_s,
                admin_role=admin_role,
            )
            validators.append(
                TokenValidator(
                    OidcSettings(
                        issuer=issuer_url,
                        audience=settings.dev_issuer.audience,
                        admin_role=admin_role,
                    ),
                    http,
                )
            )
            self.log.warning(
                "dev_issuer.ENABLED",
                message="DEVELOPMENT TOKEN ISSUER IS ON: anyone who can reach "
                f"{issuer_url}/token can log in as {list(settings.dev_issuer.users)}. "
                "Never enable it in production.",
            )
        if not validators:
            raise ConfigError("no token issuer configured: set [oidc] or enable [dev_issuer]")
        self.validators = TokenValidators(validators, metrics=self.metrics)

        ca = None
        if settings.device_ca_cert and settings.device_ca_key:
            ca = DeviceCA.load(
                Path(settings.device_ca_cert),
                Path(settings.device_ca_key),
                crl_file=Path(settings.crl_file) if settings.crl_file else None,
                validity_days=settings.device_cert_days,
            )
        self.backends = BackendRegistry(self.store, secret=secret)
        fleet = BrokerFleet(
            settings.brokers,
            self.store,
            password_for=functools.partial(session_password, secret),
            logger=self.log,
            on_pass=self._count_pass,
            full_interval_s=settings.full_reconcile_interval_s,
            extra_desired=self.backends.desired,
            tokens=tokens is not None,
            token_key=tokens,
        )
        self._stack.push_async_callback(fleet.close)
        self.telemetry.watch_fleet(fleet.status.values)
        session_lists = SessionListPublisher(
            settings.brokers,
            self.store,
            signing_key=signing_keys[0],
            password=session_password(secret, PUBLISHER_ACCOUNT),
            logger=self.log,
            extra_sessions=self.backends.support_sessions,
        )
        self.backends.attach(
            fleet, session_lists=session_lists, retry_after_s=max(1, round(settings.broker_retry_interval_s))
        )
        self._stack.push_async_callback(session_lists.close)
        self.service = AuthzService(
            store=self.store,
            fleet=fleet,
            signing_keys=signing_keys,
            session_secret=secret,
            logger=self.log,
            session_ttl_s=settings.session_ttl_s,
            cap_session_to_token=settings.cap_session_to_token,
            max_sessions_per_user=settings.max_sessions_per_user,
            admin_role=admin_role,
            ca=ca,
            crl_reload_command=settings.crl_reload_command,
            on_crl_written=self._on_crl_written,
            retry_after_s=max(1, round(settings.broker_retry_interval_s)),
            session_lists=session_lists,
            on_sessions_expired=lambda count: self.metrics.inc("amora_authz_sessions_expired_total", count),
            tokens=tokens,
        )
        await self.service.write_crl()
        await self.service.reconcile()
        if self._background:
            self._tasks = await self._stack.enter_async_context(asyncio.TaskGroup())
            self._stack.callback(self._stop.set)
            self._tasks.create_task(self._reconcile_loop(), name="amora-authz.reconcile-loop")
            self._tasks.create_task(self._expiry_loop(), name="amora-authz.session-expiry")
            self._tasks.create_task(self._retry_loop(), name="amora-authz.broker-retry")
            if settings.broker_stats and settings.brokers:
                self.broker_stats = BrokerStats(settings.brokers, meter=self.telemetry.meter, logger=self.log)
                self._tasks.create_task(self._stats_loop(self.broker_stats), name="amora-authz.broker-stats")
        self.log.info(
            "authz.started",
            database=settings.database_url.split(":", 1)[0],
            brokers=[b.name for b in settings.brokers],
            credentials=settings.broker.credentials,
            token_kid=None if tokens is None else tokens.kid,
            issuers=list(self.validators._by_issuer),  # noqa: SLF001 - own class
        )

    async def _stats_loop(self, stats: BrokerStats) -> None:
        """Follow the brokers' $SYS topics until stopped."""
        following = asyncio.ensure_future(stats.run())
        try:
            await self._stop.wait()
        finally:
            await cancel_and_wait(following)

    def _count_pass(self, broker: str, *, full: bool, ok: bool) -> None:
        kind = "full" if full else "scoped"
        self.metrics.inc("amora_authz_broker_reconcile_passes_total", broker=broker, kind=kind, ok=ok)
        if not ok:
            self.metrics.inc("amora_authz_broker_failures_total", broker=broker)

    async def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` or until stopped; return whether to go on."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
        return not self._stop.is_set()

    async def _reconcile_loop(self) -> None:
        # Jittered: replicas (and services restarted together) do not check in step.
        rng = random.Random()  # noqa: S311 - jitter, not security
        while await self._sleep(self.settings.reconcile_interval_s * rng.uniform(0.5, 1.5)):
            try:
                await self.service.periodic_pass()
            except AuthzError as exc:
                self.log.warning("reconcile.failed", error=exc.message)

    async def _retry_loop(self) -> None:
        """Re-apply what a broker missed until it holds everything (fail closed)."""
        fleet = self.service.fleet
        while await self._sleep(self.settings.broker_retry_interval_s):
            if fleet.behind():
                try:
                    interval = self.settings.broker_retry_interval_s
                    await fleet.retry_pending(backoff=(interval, max(interval, 30.0)))
                except AuthzError as exc:
                    self.log.warning("broker.retry_failed", error=exc.message)

    async def _expiry_loop(self) -> None:
        while await self._sleep(self.settings.expiry_check_interval_s):
            try:
                await self.service.expire_sessions()
            except AuthzError as exc:
                self.log.warning("session.expiry_failed", error=exc.message)

    def broker_endpoints(self) -> list[str]:
        """The endpoints handed to apps, primary first."""
        return [e for b in self.settings.brokers for e in b.client_endpoints]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the loops and close every connection."""
        self._stop.set()
        try:
            await self._stack.aclose()
        finally:
            if self._own_telemetry:
                self.telemetry.shutdown()
        self.log.info("authz.stopped")
