"""Amora authorization service.

Validates user JWTs, maps users to devices, issues session broker credentials and
signed grants, keeps every broker's dynamic-security state reconciled with its
database, and runs the device registry (CSRs, revocation, CRL).
"""

from importlib.metadata import PackageNotFoundError, version

from amora_authz._app import create_app, create_ops_app
from amora_authz._ca import DeviceCA, IssuedCertificate
from amora_authz._config import DevIssuerSettings, Settings, load_settings
from amora_authz._devissuer import DevIssuer
from amora_authz._dynsec import (
    MANAGED,
    AclSpec,
    BrokerEndpoint,
    ClientSpec,
    DynsecClient,
    DynsecState,
    ForeignNames,
    GroupSpec,
    RoleSpec,
    Scope,
    foreign_names,
    plan,
)
from amora_authz._errors import (
    AuthenticationError,
    AuthzError,
    BrokerError,
    ChangePendingError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    StoreError,
)
from amora_authz._fleet import ApplyOutcome, BrokerFleet, BrokerStatus, desired_state
from amora_authz._jwt import Claims, JwksCache, OidcSettings, TokenValidator
from amora_authz._limits import RateLimit, RateLimiter, RateLimitSettings
from amora_authz._runtime import AuthzRuntime
from amora_authz._service import AuthzService, session_password
from amora_authz._store import (
    Certificate,
    Device,
    Link,
    Session,
    Store,
    open_store,
)

try:
    __version__ = version("amora-authz-service")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "MANAGED",
    "AclSpec",
    "ApplyOutcome",
    "AuthenticationError",
    "AuthzError",
    "AuthzRuntime",
    "AuthzService",
    "BrokerEndpoint",
    "BrokerError",
    "BrokerFleet",
    "BrokerStatus",
    "Certificate",
    "ChangePendingError",
    "Claims",
    "ClientSpec",
    "ConfigError",
    "ConflictError",
    "DevIssuer",
    "DevIssuerSettings",
    "Device",
    "DeviceCA",
    "DynsecClient",
    "DynsecState",
    "ForeignNames",
    "GroupSpec",
    "InvalidInputError",
    "IssuedCertificate",
    "JwksCache",
    "Link",
    "NotFoundError",
    "OidcSettings",
    "PermissionDeniedError",
    "RateLimit",
    "RateLimitSettings",
    "RateLimitedError",
    "RateLimiter",
    "RoleSpec",
    "Scope",
    "Session",
    "Settings",
    "Store",
    "StoreError",
    "TokenValidator",
    "__version__",
    "create_app",
    "create_ops_app",
    "desired_state",
    "foreign_names",
    "load_settings",
    "open_store",
    "plan",
    "session_password",
]
