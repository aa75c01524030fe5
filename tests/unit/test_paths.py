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


# --- hostile input: never anything but an ApiError (400) --------------------------------------------

import errno  # noqa: E402
import os  # noqa: E402

from master.paths import NAME_MAX, check_output_parent, require_file  # noqa: E402


def refused(call, code="invalid_path"):
    with pytest.raises(ApiError) as info:
        call()
    assert (info.value.status, info.value.code) == (400, code), info.value.message
    return info.value.message


@pytest.mark.parametrize("bad", [
    "loop/x.mp4",  # loop -> loop
    "ping/x.mp4",  # ping -> pong -> ping
    "loop",
    "in/../loop/x.mp4",
])
def test_symlink_loops_are_400_not_runtime_error(root, bad):
    (root / "loop").symlink_to("loop")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    refused(lambda: resolve_in_root(root, bad, "output_path"))


def test_symlink_loop_message_is_clear_and_leaks_no_absolute_path(root):
    (root / "loop").symlink_to("loop")
    message = refused(lambda: resolve_in_root(root, "loop/x.mp4", "output_path"))
    assert "loop" in message and str(root) not in message


@pytest.mark.parametrize("bad", [
    "a" * (NAME_MAX + 1) + ".mp4",
    "out/" + "b" * 300 + "/x.mp4",
    "é" * 128 + ".mp4",  # 256 bytes in UTF-8, though only 132 characters
    "x/" * 2100 + "a.mp4",  # over PATH_MAX bytes overall
    "a" * 5000,
])
def test_over_long_names_are_400(root, bad):
    message = refused(lambda: resolve_in_root(root, bad, "output_path"))
    assert "long" in message


def test_longest_allowed_component_passes(root):
    name = "a" * (NAME_MAX - 4) + ".mp4"
    assert resolve_in_root(root, f"out/{name}", "output_path").name == name


@pytest.mark.parametrize("bad", ["in/\ud800.mp4", "\udcff.mp4", "a\udc80b.mp4"])
def test_lone_surrogates_are_400(root, bad):
    assert "Unicode" in refused(lambda: resolve_in_root(root, bad, "source_path"))


@pytest.mark.parametrize("bad", ["in\\a.mp4", "..\\..\\etc\\passwd", "C:\\x.mp4", "a\nb.mp4", "a\tb.mp4", "\x1b[31m.mp4",
                                 "a\x7f.mp4", "/", "//x", "~root/x", "in/../..", "./..", ["in/a.mp4"],
                                 {"p": 1}, b"in/a.mp4", True, 1.5])
def test_more_garbage_is_refused(root, bad):
    refused(lambda: resolve_in_root(root, bad, "source_path"))


@pytest.mark.parametrize("good", ["in/a.mp4", "./in/a.mp4", "in//a.mp4", "in/./a.mp4", "in/a.mp4/"])
def test_harmless_spellings_resolve(root, good):
    assert resolve_in_root(root, good, "source_path") == (root / "in" / "a.mp4").resolve()


def test_unicode_names_are_fine(root):
    assert resolve_in_root(root, "out/été 🎬.mp4", "output_path").name == "été 🎬.mp4"


def test_symlink_expanding_past_path_max_is_400(root):
    # real folders nested past PATH_MAX (made relative to open folders), named by a short client path
    name = "d" * 200
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for level in range(30):
            os.mkdir(name, dir_fd=fd)
            if level == 14:
                os.symlink("/".join([name] * 15), "s2", dir_fd=fd)  # halfway down: the next 15 levels
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    (root / "s1").symlink_to("/".join([name] * 14))  # s1 -> the folder holding s2
    message = refused(lambda: resolve_in_root(root, "s1/s2/x.mp4", "output_path"))
    assert "long" in message and str(root) not in message


class TestRequireFile:
    def test_size_of_a_regular_file(self, root):
        assert require_file(root / "in" / "a.mp4", "source_path") == 1

    def test_missing_is_source_not_found(self, root):
        refused(lambda: require_file(root / "in" / "nope.mp4", "source_path"), "source_not_found")

    def test_under_a_file_is_source_not_found(self, root):
        refused(lambda: require_file(root / "in" / "a.mp4" / "x.mp4", "source_path"), "source_not_found")

    def test_directory_is_invalid_path(self, root):
        refused(lambda: require_file(root / "in", "source_path"))

    def test_fifo_is_invalid_path(self, root):
        os.mkfifo(root / "in" / "pipe.mp4")
        refused(lambda: require_file(root / "in" / "pipe.mp4", "source_path"))

    def test_symlink_loop_is_400(self, root):
        (root / "in" / "loop.mp4").symlink_to("loop.mp4")
        assert "loop" in refused(lambda: require_file(root / "in" / "loop.mp4", "source_path"))

    def test_name_too_long_is_400(self, root):
        refused(lambda: require_file(root / ("n" * 300), "source_path"))

    @pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG, errno.EIO])
    def test_stat_errors_are_400(self, root, monkeypatch, code):
        # the tests run as root, so EACCES cannot be provoked with chmod: make stat fail instead
        from pathlib import Path

        def failing_stat(self, *args, **kwargs):
            raise OSError(code, os.strerror(code), str(self))

        monkeypatch.setattr(Path, "stat", failing_stat)
        message = refused(lambda: require_file(root / "in" / "a.mp4", "source_path"))
        assert str(root) not in message


class TestCheckOutputParent:
    def test_existing_folder_and_missing_folders_pass(self, root):
        check_output_parent(resolve_in_root(root, "in/x.mp4", "output_path"), root=root)
        check_output_parent(resolve_in_root(root, "new/deeper/x.mp4", "output_path"), root=root)
        check_output_parent(resolve_in_root(root, "top.mp4", "output_path"))

    @pytest.mark.parametrize("output", ["in/a.mp4/x.mp4", "in/a.mp4/more/x.mp4"])
    def test_a_file_as_parent_is_400(self, root, output):
        message = refused(lambda: check_output_parent(resolve_in_root(root, output, "output_path"), root=root))
        assert "in/a.mp4" in message and str(root) not in message

    def test_without_root_the_message_names_only_the_file(self, root):
        message = refused(lambda: check_output_parent(root / "in" / "a.mp4" / "x.mp4"))
        assert "a.mp4" in message and str(root) not in message

    def test_parent_through_a_symlink_to_a_file_is_400(self, root):
        (root / "f").symlink_to(root / "in" / "a.mp4")
        refused(lambda: check_output_parent(resolve_in_root(root, "f/x.mp4", "output_path"), root=root))

    def test_stat_errors_are_400(self, root, monkeypatch):
        real_stat = os.stat

        def failing(path, *args, **kwargs):
            if str(path).endswith("/in"):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_stat(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", failing)
        refused(lambda: check_output_parent(root / "in" / "x.mp4", root=root))
