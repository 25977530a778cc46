"""Shared fixtures. Tests run on CPU with no network; GPU-only tests skip without a GPU."""

from tests.fake_data import skip_integrity_checks  # noqa: F401  (a fixture)
