"""The SDK's logging: its own lines at their levels, gmqtt's kept quiet unless configured."""

import logging
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.services

_GMQTT_LOGGERS = ("gmqtt", "amora_sync.gmqtt")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root_at_info() -> Iterator[_Collect]:
    """An application that logs everything at INFO through one root handler, fresh loggers."""
    root = logging.getLogger()
    handler = _Collect()
    saved = root.level, {name: logging.getLogger(name).level for name in _GMQTT_LOGGERS}
    for name in _GMQTT_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)  # as in a fresh process
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def _from_gmqtt(record: logging.LogRecord) -> bool:
    return any(record.name == n or record.name.startswith(f"{n}.") for n in _GMQTT_LOGGERS)


async def test_gmqtt_info_lines_do_not_reach_an_app_logging_at_info(stack, root_at_info):
    # Entering connects and subscribes: gmqtt logs the connection, SUBSCRIBE and SUBACK at INFO.
    async with stack.client() as client:
        assert client.connected
    records = root_at_info.records
    assert any(r.name == "amora_sync" and "connected to" in r.getMessage() for r in records)
    noise = [f"{r.name}: {r.getMessage()}" for r in records if _from_gmqtt(r) and r.levelno < logging.WARNING]
    assert noise == []


async def test_a_level_the_app_set_on_gmqtt_is_kept(stack, root_at_info):
    logging.getLogger("gmqtt").setLevel(logging.INFO)
    async with stack.client() as client:
        assert client.connected
    assert logging.getLogger("gmqtt").level == logging.INFO
    assert any(r.name.startswith("gmqtt.") and r.levelno == logging.INFO for r in root_at_info.records)
