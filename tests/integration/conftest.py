import pytest

from tests.support.network import TestNetwork, launcher


@pytest.fixture(scope="session")
def network() -> TestNetwork:
    """The running private network (waits for `scripts/testnet up` to finish, once)."""
    return launcher.wait()
