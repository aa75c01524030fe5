import urllib.parse

from master.file_headers import attachment_disposition, content_type_for


def test_plain_ascii_name():
    assert attachment_disposition("clip.mp4") == 'attachment; filename="clip.mp4"'


def test_name_with_spaces_stays_quoted():
    assert attachment_disposition("my clip.mp4") == 'attachment; filename="my clip.mp4"'


def test_non_ascii_name_gets_rfc6266_extended_form():
    header = attachment_disposition("café é.mkv")
    assert header.startswith('attachment; filename="caf_ _.mkv"; ')
    encoded = header.split("filename*=UTF-8''", 1)[1]
    assert urllib.parse.unquote(encoded) == "café é.mkv"


def test_header_injection_is_impossible():
    header = attachment_disposition('evil"\r\nSet-Cookie: x=1.mp4')
    assert "\r" not in header and "\n" not in header
    assert '"evil_' in header


def test_content_types():
    assert content_type_for("a.mp4") == "video/mp4"
    assert content_type_for("a.MKV") == "video/x-matroska"
    assert content_type_for("noext") == "application/octet-stream"
