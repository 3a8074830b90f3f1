"""Redis URLs: one server or a cluster, checked before anything connects."""

from __future__ import annotations

import pytest

from contracts.redis_client import _cluster_options, _seed_nodes, check_url, is_cluster, keys_for


def test_a_cluster_url_names_its_seed_nodes_and_credentials():
    url = "rediss+cluster://app:s%40cret@10.0.0.5:7000,10.0.0.6:7001"
    assert is_cluster(url) and check_url(url) == url
    assert _seed_nodes(url) == [("10.0.0.5", 7000), ("10.0.0.6", 7001)]
    assert _cluster_options(url) == {"ssl": True, "username": "app", "password": "s@cret"}
    assert _cluster_options("redis+cluster://h:1") == {"ssl": False}
    assert keys_for(url, "din:").cluster and not keys_for("redis://h:1/0", "din:").cluster


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://h:6379", "starts with one of"),
        ("redis+cluster://h", "host:port"),
        ("redis+cluster://h:7000,:7001", "host:port"),
        ("redis+cluster://h:99999", "host:port"),
        ("redis+cluster://h:7000/2", "database 0"),
    ],
)
def test_a_url_that_cannot_work_is_refused_with_what_is_wrong(url, says):
    with pytest.raises(ValueError, match=says):
        check_url(url)
    assert not is_cluster("redis://127.0.0.1:6379/0") and check_url("unix:///tmp/redis.sock")
