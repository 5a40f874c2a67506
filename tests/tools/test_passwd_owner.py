"""Provisioning sets the password file's owner itself (issue 10): created as root, it goes to
the `mosquitto` user, which Mosquitto 2.0 drops to before it reads the file; a file that
exists keeps its owner. (Run as root with Debian's mosquitto user, as CI does; else skipped.)"""

from __future__ import annotations

import os
import pwd

import pytest

from fedge.tools.broker.passwd import upsert_password

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")


def _mosquitto():
    try:
        return pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user (apt-get install mosquitto)")


def test_a_new_password_file_belongs_to_the_broker_user(tmp_path):
    user = _mosquitto()
    path = tmp_path / "passwd"
    upsert_password(path, "dev-000", "secret", iterations=1000)
    st = path.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (user.pw_uid, user.pw_gid, 0o600)


def test_an_existing_password_file_keeps_its_owner(tmp_path):
    _mosquitto()
    path = tmp_path / "passwd"
    upsert_password(path, "dev-000", "secret", iterations=1000)
    os.chown(path, 0, 0)  # an operator chose root
    upsert_password(path, "dev-001", "secret", iterations=1000)
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)
