"""Bounded waits live in the package (service/testing/polling.py); the suite's modules import
them from here as before."""

from service.testing.polling import WaitTimeout, wait_until, wait_until_async

__all__ = ["WaitTimeout", "wait_until", "wait_until_async"]
