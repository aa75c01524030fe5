import pytest

from master.errors import ApiError
from master.paths import resolve_in_root


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "in").mkdir(parents=True)
    (r / "in" / "a.mp4").write_bytes(b"x")
    return r


def test_relative_path_resolves_inside_root(root):
    assert resolve_in_root(root, "in/a.mp4", "source_path") == (root / "in" / "a.mp4").resolve()


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x.mp4", "in/../../x.mp4", "", "  ", "a\x00b", "~/x", 5, None, "."])
def test_escapes_and_garbage_are_refused(root, bad):
    with pytest.raises(ApiError) as info:
        resolve_in_root(root, bad, "source_path")
    assert info.value.status == 400 and info.value.code == "invalid_path"


def test_symlink_leaving_the_root_is_refused(root, tmp_path):
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    with pytest.raises(ApiError):
        resolve_in_root(root, "link.mp4", "source_path")


def test_symlink_inside_the_root_is_allowed(root):
    (root / "alias.mp4").symlink_to(root / "in" / "a.mp4")
    assert resolve_in_root(root, "alias.mp4", "source_path") == (root / "in" / "a.mp4").resolve()
