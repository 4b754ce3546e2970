import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from lib import Cluster, SQLSPAN  # noqa: E402


def pytest_sessionstart(session):
    if os.geteuid() != 0:
        raise pytest.UsageError("the end-to-end tests run sqlspan and need root")
    if not os.access(SQLSPAN, os.X_OK):
        raise pytest.UsageError("build sqlspan first (make)")


@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def tls_cluster():
    """A cluster with TLS on TCP (a self-signed certificate)."""
    c = Cluster(ssl=True)
    yield c
    c.stop()
