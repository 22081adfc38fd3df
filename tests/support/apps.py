"""In-process apps live in the package (service/testing/apps.py); the suite's modules import
them from here as before."""

from service.testing.apps import running, started, test_settings

__all__ = ["running", "started", "test_settings"]
