"""These tests need a local Ray inside a network namespace of their own: the outer test
(tests/serve/test_serve_ray.py) runs them there with REALTIME_ERC_RAY_NETNS=1; a plain pytest
run does not collect them."""

from __future__ import annotations

from realtime_erc.ray_support import inside_private_network


def pytest_ignore_collect(collection_path, config) -> bool:
    return not inside_private_network()
