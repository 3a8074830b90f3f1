import gzip

import orjson
import pytest
import redis

from jobs.load_behaviors import main
from tests.helpers import REDIS_URL, redis_prefix


@pytest.fixture
def prefix():
    with redis_prefix() as p:
        yield p


def test_loads_each_users_newest_behaviours_in_time_order_with_profiles(tmp_path, prefix):
    with gzip.open(tmp_path / "interactions.csv.gz", "wt") as f:
        f.write("user_id,item_id,timestamp\n7,3,30\n7,1,10\n7,2,20\n7,4,40\n8,5,1\n")
    with gzip.open(tmp_path / "items.csv.gz", "wt") as f:
        f.write("item_id,category_id\n1,10\n2,20\n3,30\n4,40\n5,50\n")
    with gzip.open(tmp_path / "users.csv.gz", "wt") as f:
        f.write("user_id,age,gender,zip_code\n7,30,F,12345\n")
    r = redis.Redis.from_url(REDIS_URL, decode_responses=False)
    r.rpush(f"{prefix}hist:7", b'{"item_id": 999}')  # stale data is replaced, not appended to
    main(
        [
            "--data",
            str(tmp_path),
            "--redis-url",
            REDIS_URL,
            "--key-prefix",
            prefix,
            "--cap",
            "3",
            "--no-progress",
        ]
    )
    hist = [orjson.loads(x) for x in r.lrange(f"{prefix}hist:7", 0, -1)]
    assert hist == [
        {"item_id": 2, "category_id": 20, "ts": 20},
        {"item_id": 3, "category_id": 30, "ts": 30},
        {"item_id": 4, "category_id": 40, "ts": 40},
    ]
    assert r.llen(f"{prefix}hist:8") == 1
    profile = {k.decode() if isinstance(k, bytes) else k: v for k, v in r.hgetall(f"{prefix}prof:7").items()}
    assert {k: orjson.loads(v) for k, v in profile.items()} == {"age": 30, "gender": "F"}
    assert r.ttl(f"{prefix}hist:7") > 0
    r.close()


def test_unreachable_redis_is_a_clear_cli_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--data", "synthetic", "--users", "5", "--redis-url", "redis://127.0.0.1:1/0", "--no-progress"])
    assert exc.value.code == 1 and "redis://127.0.0.1:1/0" in capsys.readouterr().err
