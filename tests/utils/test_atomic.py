import os
import stat

import pytest

from skyvar.utils.atomic import atomic_path, write_json_atomic


def test_atomic_write_leaves_no_debris_on_error(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_replaces_and_is_readable(tmp_path):
    target = write_json_atomic(tmp_path / "a.json", {"x": 1})
    write_json_atomic(target, {"x": 2})
    assert target.read_text().strip().endswith("}") and '"x": 2' in target.read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask  # as a plain open() would make it
