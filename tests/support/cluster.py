"""The cluster control lives in the package (service/testing/cluster.py); the suite's
modules import it from here as before."""

from service.testing.cluster import (
    Cluster,
    Pair,
    bin_dir,
    free_port,
    switchover,
)
from service.testing.cluster import server_user as _server_user

__all__ = ["Cluster", "Pair", "_server_user", "bin_dir", "free_port", "switchover"]
