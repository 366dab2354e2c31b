"""Amora authorization service.

Validates user JWTs, maps users to devices, issues session broker credentials and
signed grants, keeps every broker's dynamic-security state reconciled with its
database, and runs the device registry (CSRs, revocation, CRL).
"""

from importlib.metadata import PackageNotFoundError, version

from amora_authz._app import create_app, create_ops_app
from amora_authz._config import BrokerSettings, DevIssuerSettings, Settings, load_settings
from amora_authz._dynsec import BrokerEndpoint
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
from amora_authz._jwt import OidcSettings
from amora_authz._limits import RateLimitSettings
from amora_authz._runtime import AuthzRuntime

try:
    __version__ = version("amora-authz-service")
except PackageNotFoundError:  # pragma: no cover - source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "AuthenticationError",
    "AuthzError",
    "AuthzRuntime",
    "BrokerEndpoint",
    "BrokerError",
    "BrokerSettings",
    "ChangePendingError",
    "ConfigError",
    "ConflictError",
    "DevIssuerSettings",
    "InvalidInputError",
    "NotFoundError",
    "OidcSettings",
    "PermissionDeniedError",
    "RateLimitSettings",
    "RateLimitedError",
    "Settings",
    "StoreError",
    "__version__",
    "create_app",
    "create_ops_app",
    "load_settings",
]
