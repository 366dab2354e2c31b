"""The HTTP API (Litestar, msgspec bodies, OpenAPI at ``/schema``).

Errors are JSON ``{"code": ..., "message": ...}`` with a stable code: 401 for bad
tokens, 403 for missing rights, 404, 409, 422 for invalid input (including bodies
that do not match the schema or nest too deeply), 429 with ``Retry-After`` when a rate
limit refuses, and 503 (``change_pending`` with ``Retry-After``) when an access change
has not reached every broker yet (`amora_authz._http_errors`).

The operations endpoints can be served by a second, internal-only app
(:func:`create_ops_app`) on a listener of their own.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import Litestar, MediaType, Request, Response, delete, get, post, put
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.params import FromPath, JSONBody  # noqa: TC002 - Litestar reads them at runtime
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from amora_authz._access import AccessLog
from amora_authz._admin_devices import admin_device_handlers
from amora_authz._backend_api import backend_handlers
from amora_authz._bodies import (  # Litestar reads the body types at runtime
    DeviceRegisteredResponse,
    DeviceRegistration,
    DeviceUsers,
    DevTokenRequest,
    DevTokenResponse,
    KeysDocument,
    LinkResponse,
    RevokedResponse,
    UserDevices,
)
from amora_authz._enrolment import enrolment_handlers
from amora_authz._errors import (
    AuthenticationError,
    AuthzError,
    InvalidInputError,
    RateLimitedError,
)
from amora_authz._http_errors import EXCEPTION_HANDLERS
from amora_authz._jwt import Claims
from amora_authz._requests import RequestTelemetry
from amora_authz._runtime import AuthzRuntime
from amora_authz._service import b64
from amora_authz._telemetry import METRICS_CONTENT_TYPE
from amora_protocol import (
    BrokerCredential,
    DevicePublicKeys,
    SessionRequest,
    SessionResponse,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from amora_authz._config import Settings
    from amora_authz._devissuer import DevIssuer
    from amora_authz._service import SessionIssued

__all__ = ["create_app", "create_ops_app"]

VERSION = "0.1.0"


NO_STORE = CacheControlHeader(no_store=True)
"""Answers that carry credentials must not be cached anywhere."""


# -- helpers ----------------------------------------------------------------------------


def _runtime(request: Request[Any, Any, Any]) -> AuthzRuntime:
    runtime: AuthzRuntime = request.app.state.runtime
    return runtime


# -- dependencies (Litestar DI) -----------------------------------------------------------
# Handlers declare what they need by parameter name: ``runtime`` (the running service),
# ``caller`` (the caller's validated token claims) and ``claims`` (the same, once the
# request is within its rate limits; each handler says which limit applies).


Runtime = NamedDependency[AuthzRuntime]
"""The running service (dependency ``runtime``)."""
CallerClaims = NamedDependency[Claims]
"""The caller's validated token claims (dependency ``caller``)."""
AuthzClaims = NamedDependency[Claims]
"""The caller's claims within the handler's rate limit (dependency ``claims``)."""


async def _provide_runtime(request: Request[Any, Any, Any]) -> AuthzRuntime:
    return _runtime(request)


async def _provide_caller(request: Request[Any, Any, Any], runtime: Runtime) -> Claims:
    """The caller's claims from ``Authorization: Bearer <JWT>``.

    Raises:
        AuthenticationError: the header is missing or not a bearer token, or the token is invalid.
    """
    authorization = request.headers.get("authorization")
    if not authorization:
        raise AuthenticationError("an Authorization: Bearer token is required", code="missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("expected Authorization: Bearer <token>", code="missing_token")
    return await runtime.validators.validate(token.strip())


def _claims_within(kind: str | None) -> dict[str, Provide]:
    """The ``claims`` dependency: the caller's claims, once within the ``kind`` rate limits."""

    async def claims(caller: CallerClaims, runtime: Runtime) -> Claims:
        if kind is not None:
            try:
                runtime.limits.check(kind, caller.subject)
            except RateLimitedError as exc:
                runtime.metrics.inc("amora_authz_rate_limited_total", limit=exc.limit)
                raise
        return caller

    return {"claims": Provide(claims)}


_USER: Final = _claims_within(None)
_SESSIONS: Final = _claims_within("sessions")
_ADMIN: Final = _claims_within("admin")
_DEPENDENCIES: Final = {"runtime": Provide(_provide_runtime), "caller": Provide(_provide_caller)}


MAX_JSON_DEPTH = 16
"""Deepest nesting a request body may have (the API's bodies are flat objects)."""

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")


def _json_depth(body: bytes) -> int:
    """The deepest ``[``/``{`` nesting in ``body`` (strings skipped; not a validator)."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", body))
    if len(brackets) <= MAX_JSON_DEPTH:
        return len(brackets)
    depth = deepest = 0
    for char in brackets:
        depth += 1 if char in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


async def _refuse_deep_bodies(request: Request[Any, Any, Any]) -> None:
    """Refuse deeply nested JSON before any parser recurses into it (422, not a crash).

    Raises:
        InvalidInputError: the body nests deeper than :data:`MAX_JSON_DEPTH`.
    """
    if request.method not in {"POST", "PUT", "PATCH"}:
        return
    if _json_depth(await request.body()) > MAX_JSON_DEPTH:
        raise InvalidInputError(
            f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels; send the flat object the API documents",
            code="invalid_input",
        )


def _session_response(runtime: AuthzRuntime, issued: SessionIssued) -> SessionResponse:
    session = issued.session
    return SessionResponse(
        session_id=session.session_id,
        expires_at=session.expires_at_ms,
        broker=BrokerCredential(
            endpoints=tuple(runtime.broker_endpoints()),
            username=session.session_id,
            password=issued.password,
            client_id=session.session_id,
        ),
        grant=b64(issued.grant),
        devices=tuple(
            DevicePublicKeys(
                device_id=d.device_id, signing_key=b64(d.signing_key), encryption_key=b64(d.encryption_key)
            )
            for d in issued.devices
        ),
        authz_keys=runtime.service.authz_keys(),
    )


# -- sessions ---------------------------------------------------------------------------


@post("/v1/sessions", status_code=HTTP_201_CREATED, tags=["sessions"], cache_control=NO_STORE, dependencies=_SESSIONS)
async def create_session(data: JSONBody[SessionRequest], claims: AuthzClaims, runtime: Runtime) -> SessionResponse:
    """Exchange a user JWT for a broker credential and a grant."""
    issued = await runtime.service.create_session(
        claims,
        signing_key=data.signing_key,
        encryption_key=data.encryption_key,
        client_name=data.client_name,
    )
    runtime.metrics.inc("amora_authz_sessions_created_total")
    return _session_response(runtime, issued)


@post(
    "/v1/sessions/{session_id:str}/refresh",
    status_code=HTTP_200_OK,
    tags=["sessions"],
    cache_control=NO_STORE,
    dependencies=_SESSIONS,
)
async def refresh_session(session_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> SessionResponse:
    """Extend a session with a fresh JWT: later expiry, new grant, same broker credential."""
    issued = await runtime.service.refresh_session(claims, session_id)
    runtime.metrics.inc("amora_authz_sessions_refreshed_total")
    return _session_response(runtime, issued)


@delete("/v1/sessions/{session_id:str}", status_code=HTTP_204_NO_CONTENT, tags=["sessions"], dependencies=_USER)
async def delete_session(session_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> None:
    """Log out: the broker credential is removed and a live connection kicked."""
    await runtime.service.delete_session(claims, session_id)
    runtime.metrics.inc("amora_authz_sessions_deleted_total")


# -- devices ----------------------------------------------------------------------------


@get("/v1/devices/{device_id:str}/keys", tags=["devices"], dependencies=_USER)
async def device_keys(device_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> DevicePublicKeys:
    """A device's public keys (for its users)."""
    return await runtime.service.device_keys(claims, device_id)


@post("/v1/admin/devices", status_code=HTTP_201_CREATED, tags=["admin"], dependencies=_ADMIN)
async def register_device(
    data: JSONBody[DeviceRegistration], claims: AuthzClaims, runtime: Runtime
) -> DeviceRegisteredResponse:
    """Register a device; a CSR is answered with a client certificate."""
    registered = await runtime.service.register_device(
        claims,
        device_id=data.device_id,
        signing_key=data.signing_key,
        encryption_key=data.encryption_key,
        csr_pem=data.csr,
    )
    return DeviceRegisteredResponse(
        device_id=registered.device.device_id,
        certificate=None if registered.certificate_pem is None else registered.certificate_pem.decode(),
        serial=None if registered.serial is None else str(registered.serial),
    )


@post("/v1/admin/devices/{device_id:str}/revoke", status_code=HTTP_200_OK, tags=["admin"], dependencies=_ADMIN)
async def revoke_device(device_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> RevokedResponse:
    """Revoke a device: kicked from the broker, certificate in the CRL, links dropped."""
    serials = await runtime.service.revoke_device(claims, device_id)
    runtime.metrics.inc("amora_authz_devices_revoked_total")
    return RevokedResponse(device_id=device_id, revoked_serials=[str(s) for s in serials])


@get("/v1/admin/devices/{device_id:str}/users", tags=["admin"], dependencies=_ADMIN)
async def device_users(device_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> DeviceUsers:
    """The users linked to a device."""
    users = await runtime.service.users_of_device(claims, device_id)
    return DeviceUsers(device_id=device_id, users=users)


@put("/v1/admin/users/{user:str}/devices/{device_id:str}", tags=["admin"], dependencies=_ADMIN)
async def link(
    user: FromPath[str], device_id: FromPath[str], claims: AuthzClaims, runtime: Runtime
) -> Response[LinkResponse]:
    """Let a user use a device: 201 when this made the link, 200 when it was there already."""
    created = await runtime.service.link(claims, user, device_id)
    return Response(
        LinkResponse(user=user, device_id=device_id, created=created),
        status_code=HTTP_201_CREATED if created else HTTP_200_OK,
    )


@delete(
    "/v1/admin/users/{user:str}/devices/{device_id:str}",
    status_code=HTTP_204_NO_CONTENT,
    tags=["admin"],
    dependencies=_ADMIN,
)
async def unlink(user: FromPath[str], device_id: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> None:
    """Remove a user's access to a device; live subscriptions are cut."""
    await runtime.service.unlink(claims, user, device_id)
    runtime.metrics.inc("amora_authz_unlinks_total")


@get("/v1/admin/users/{user:str}/devices", tags=["admin"], dependencies=_ADMIN)
async def user_devices(user: FromPath[str], claims: AuthzClaims, runtime: Runtime) -> UserDevices:
    """A user's devices (admins: any user; users: themselves)."""
    devices = await runtime.service.devices_of_user(claims, user)
    return UserDevices(user=user, devices=devices)


# -- operations -------------------------------------------------------------------------


@get("/.well-known/amora-keys", tags=["keys"])
async def amora_keys(request: Request[Any, Any, Any]) -> KeysDocument:
    """The grant-signing public keys (more than one during a rotation)."""
    return KeysDocument(keys=_runtime(request).service.authz_keys())


@get("/healthz", tags=["operations"], media_type=MediaType.JSON)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/readyz/serving", tags=["operations"])
async def readyz_serving(request: Request[Any, Any, Any]) -> Response[dict[str, str]]:
    """Ready to serve traffic: the database answers and the primary broker is reachable.

    This is the load balancer's readiness probe. ``/readyz`` is stricter (no broker may be
    behind) and feeds alerts: probing it would take every replica out of rotation while only
    the standby is down, although logins need only the primary.
    """
    runtime = _runtime(request)
    if not runtime.settings.brokers:
        return _no_brokers()
    try:
        await runtime.store.schema_version()
        runtime.service.fleet.raise_if_primary_unreachable()
    except AuthzError as exc:
        return Response({"status": "unavailable", "code": exc.code, "message": exc.message}, status_code=503)
    return Response({"status": "ready"})


def _no_brokers() -> Response[Any]:
    """Not ready without brokers: sessions would reach nothing (a configuration mistake)."""
    message = "no [[brokers]] configured: sessions would reach nothing; add the brokers this service manages"
    return Response({"status": "unavailable", "code": "no_brokers", "message": message}, status_code=503)


@get("/readyz", tags=["operations"])
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Readiness: the database answers and every broker holds every change (none behind)."""
    runtime = _runtime(request)
    if not runtime.settings.brokers:
        return _no_brokers()
    brokers = {s.name: msgspec.to_builtins(s) for s in runtime.service.fleet.status.values()}
    try:
        await runtime.store.schema_version()
        runtime.service.fleet.raise_if_behind()
    except AuthzError as exc:
        return Response(
            {"status": "unavailable", "code": exc.code, "message": exc.message, "brokers": brokers},
            status_code=503,
        )
    return Response({"status": "ready", "brokers": brokers})


@get("/metrics", tags=["operations"], media_type=METRICS_CONTENT_TYPE)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text metrics (written by the OpenTelemetry Prometheus exporter)."""
    return Response(_runtime(request).telemetry.render(), media_type=METRICS_CONTENT_TYPE)


# -- development issuer -----------------------------------------------------------------


@get("/dev-issuer/.well-known/openid-configuration", tags=["dev-issuer"], media_type=MediaType.JSON)
async def dev_discovery(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Development issuer: OpenID Provider metadata."""
    issuer = _dev_issuer(request)
    return issuer.discovery()


@get("/dev-issuer/jwks", tags=["dev-issuer"], media_type=MediaType.JSON)
async def dev_jwks(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Development issuer: its public keys."""
    return _dev_issuer(request).jwks()


@post("/dev-issuer/token", status_code=HTTP_200_OK, tags=["dev-issuer"], cache_control=NO_STORE)
async def dev_token(request: Request[Any, Any, Any], data: JSONBody[DevTokenRequest]) -> DevTokenResponse:
    """Development issuer: an RS256 token for a named development user."""
    issuer = _dev_issuer(request)
    token = issuer.issue(data.username)
    _runtime(request).log.warning("dev_issuer.token_issued", user=data.username)
    return DevTokenResponse(
        access_token=token,
        token_type="Bearer",  # noqa: S106 - the OAuth token type, not a secret
        expires_in=issuer.ttl_s,
    )


def _dev_issuer(request: Request[Any, Any, Any]) -> DevIssuer:
    issuer = _runtime(request).dev_issuer
    if issuer is None:
        raise HTTPException(status_code=404, detail="the development issuer is disabled")
    return issuer


def _openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Amora authz service",
        version=VERSION,
        path="/schema",
        components=Components(
            security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
        ),
        security=[{"bearer": []}],
    )


def _lifespan(settings: Settings, runtime: AuthzRuntime | None) -> Any:  # noqa: ANN401 - Litestar's lifespan type
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if runtime is not None:
            app.state.runtime = runtime
            yield
            return
        async with AuthzRuntime(settings) as own:
            app.state.runtime = own
            yield

    return lifespan


def _api_handlers(settings: Settings) -> list[Any]:
    handlers: list[Any] = [
        create_session,
        refresh_session,
        delete_session,
        device_keys,
        register_device,
        revoke_device,
        device_users,
        link,
        unlink,
        user_devices,
        amora_keys,
        healthz,
        readyz_serving,
        *enrolment_handlers(admin=_ADMIN, no_store=NO_STORE),
        *admin_device_handlers(admin=_ADMIN),
        *backend_handlers(admin=_ADMIN, no_store=NO_STORE),
    ]
    if settings.dev_issuer.enabled:
        handlers += [dev_discovery, dev_jwks, dev_token]
    return handlers


def create_app(settings: Settings, *, runtime: AuthzRuntime | None = None) -> Litestar:
    """Build the public ASGI application.

    With ``settings.ops_listen_port`` set, ``/readyz``, ``/metrics`` and ``/schema``
    are left to :func:`create_ops_app` (``/healthz`` stays: container health checks
    and load balancers probe the public port).

    Args:
        settings: the configuration.
        runtime: an already-built runtime to serve (its lifetime then belongs to the
            caller); by default the app builds one and runs it for its own lifespan.

    Returns:
        The Litestar application.
    """
    separate_ops = settings.ops_listen_port is not None
    handlers = _api_handlers(settings)
    if not separate_ops:
        handlers += [readyz, metrics]
    return Litestar(
        route_handlers=handlers,
        dependencies=_DEPENDENCIES,
        lifespan=[_lifespan(settings, runtime)],
        before_request=_refuse_deep_bodies,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[RequestTelemetry, AccessLog] if settings.access_log else [RequestTelemetry],
        # Requests are small JSON documents (the largest is a CSR).
        request_max_body_size=64 * 1024,
        openapi_config=None if separate_ops else _openapi_config(),
        logging_config=None,
    )


def create_ops_app(settings: Settings, *, runtime: AuthzRuntime) -> Litestar:
    """Build the operations app for the internal listener (``ops_listen_port``).

    It serves ``/healthz``, ``/readyz``, ``/metrics`` and the public API's OpenAPI
    document at ``/schema/openapi.json``, and nothing else: no token is ever accepted
    here, and nothing here changes state.

    Args:
        settings: the configuration.
        runtime: the running service (shared with the public app).

    Returns:
        The Litestar application.
    """
    # The document describes the public routes: build it from an app that has them
    # (never served), once.
    document = Litestar(
        route_handlers=_api_handlers(settings),
        dependencies=_DEPENDENCIES,
        openapi_config=_openapi_config(),
        logging_config=None,
    ).openapi_schema.to_schema()

    @get("/schema/openapi.json", tags=["operations"], media_type=MediaType.JSON, include_in_schema=False)
    async def openapi_document() -> dict[str, Any]:
        """The public API's OpenAPI document."""
        return document

    return Litestar(
        route_handlers=[healthz, readyz, metrics, openapi_document],
        middleware=[RequestTelemetry],
        lifespan=[_lifespan(settings, runtime)],
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=1024,
        openapi_config=None,
        logging_config=None,
    )
