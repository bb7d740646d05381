"""Bind-address safety and target loading for `tunecraft serve`."""

from __future__ import annotations

import pytest

from tunecraft.serve.server import ServeError, check_bind, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_needs_no_key(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com"])
def test_public_address_needs_a_key(host: str) -> None:
    with pytest.raises(ServeError, match="--api-key"):
        check_bind(host, None)
    check_bind(host, "secret")
