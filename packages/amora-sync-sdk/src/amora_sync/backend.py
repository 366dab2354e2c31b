"""Backend services: verified messages from the whole fleet, split between replicas.

A backend (analytics, ingest, support) is a named identity the authz service manages
(``POST /v1/admin/backends``); its replicas consume the fleet's states, statuses or
responses through the backend's shared subscriptions. See the SDK README ("Backends").

```python
from amora_sync.backend import BackendConsumer, BackendCredentials

credentials = BackendCredentials.from_admin(admin_answer)
async with BackendConsumer(authz_url, credentials, replica=1, ca_file=ca) as consumer:
    async for item in consumer:
        ...  # acknowledged to the broker when the loop asks for the next one
```
"""

from amora_protocol import BackendRole
from amora_sync._backend import BackendConsumer, BackendCredentials, BackendStats, FleetMessage
from amora_sync._backend_keys import DeviceKeyCache

__all__ = [
    "BackendConsumer",
    "BackendCredentials",
    "BackendRole",
    "BackendStats",
    "DeviceKeyCache",
    "FleetMessage",
]
