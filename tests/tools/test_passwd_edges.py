"""tools/broker/passwd.py at its edges: a 1.x salted hash checked against hashlib directly, the
usernames a line break would split, and a `user:$` line with no hash (mutation6-transport)."""

from __future__ import annotations

import base64
import hashlib

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.broker.passwd import read_password_file, upsert_password, verify_password


def test_a_1x_hash_is_sha512_of_password_then_salt():
    salt = bytes(range(12))
    key = hashlib.sha512(b"s3cret" + salt).digest()  # mosquitto 1.x's $6$: sha512(password || salt)
    encoded = f"$6${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"
    assert verify_password("s3cret", encoded)
    assert not verify_password("s3cret!", encoded)


@pytest.mark.parametrize("bad", ["a:b", "a\nb", "a\rb", "a\0b", ""])
def test_a_username_that_would_split_or_end_its_line_is_refused(tmp_path, bad):
    path = tmp_path / "passwd"
    with pytest.raises(ConfigError, match="invalid broker username"):
        upsert_password(path, bad, "pw", iterations=1)
    assert not path.exists()


def test_a_line_with_no_hash_after_the_dollar_is_no_password_entry(tmp_path):
    path = tmp_path / "passwd"
    path.write_text("pi-a:$\n")
    with pytest.raises(ConfigError, match="line 1"):
        read_password_file(path)
    path.write_text("pi-a:$x\n")
    assert read_password_file(path) == {"pi-a": "$x"}
