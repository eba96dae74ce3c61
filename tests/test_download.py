"""Downloads against a real HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import hashlib
import os
import socket

import pytest

from bad_inputs import H5_BODY, HttpServer
from samsbench.data import download as dl

H5_SHA = hashlib.sha256(H5_BODY).hexdigest()
HTML_BODY = b"<!DOCTYPE html>\n<html><body><h1>Access denied</h1></body></html>\n"


@pytest.fixture()
def server():
    srv = HttpServer()
    yield srv
    srv.close()


def _fast(**kw):
    return {"retries": 2, "backoff": 0.01, "timeout": 5, **kw}


def _assert_clean_failure(tmp_path, out, exc_info, url, problem):
    assert not out.exists(), "a failed download left a file at the output path"
    leftovers = [p.name for p in out.parent.iterdir() if p.name != "checksums.tsv"]
    assert leftovers == [], f"temporary files left behind: {leftovers}"
    message = str(exc_info.value)
    assert url in message, message
    assert problem.lower() in message.lower(), message


def test_success(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    out = tmp_path / "d" / "f.h5ad"
    dl.download([server.url("/f.h5ad")], out, sha256=H5_SHA, **_fast())
    assert out.read_bytes() == H5_BODY
    assert [p.name for p in out.parent.iterdir()] == ["f.h5ad"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's owner-only mode


def test_checksum_mismatch(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, sha256="0" * 64, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "sha256 mismatch")


def test_truncated_body(server, tmp_path):
    plan = {"status": 200, "body": H5_BODY, "content_length": len(H5_BODY) + 100}
    server.routes["/f.h5ad"] = [plan]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "truncated body")
    assert server.hits("/f.h5ad") == 3  # retried: a cut connection is usually transient


def test_truncated_then_resumed_with_range(server, tmp_path):
    half = len(H5_BODY) // 2
    server.routes["/f.h5ad"] = [
        {"status": 200, "body": H5_BODY, "send": half},
        {"status": 200, "body": H5_BODY, "ranges": True},
    ]
    out = tmp_path / "f.h5ad"
    dl.download([server.url("/f.h5ad")], out, sha256=H5_SHA, **_fast())
    assert out.read_bytes() == H5_BODY
    assert server.requests[1][1].get("Range") == f"bytes={half}-"


def test_truncated_then_server_ignores_range(server, tmp_path):
    server.routes["/f.h5ad"] = [
        {"status": 200, "body": H5_BODY, "send": 1000},
        {"status": 200, "body": H5_BODY},  # whole body again, status 200: start over
    ]
    out = tmp_path / "f.h5ad"
    dl.download([server.url("/f.h5ad")], out, sha256=H5_SHA, **_fast())
    assert out.read_bytes() == H5_BODY


def test_html_error_page_with_status_200(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": HTML_BODY, "type": "text/html"}]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "HTML/XML page")
    assert server.hits("/f.h5ad") == 1


def test_s3_xml_error_rejected_for_text_formats(server, tmp_path):
    body = b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code></Error>'
    server.routes["/sets.gmt"] = [{"status": 200, "body": body}]
    out = tmp_path / "sets.gmt"
    url = server.url("/sets.gmt")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "HTML/XML page")


def test_text_gmt_accepted(server, tmp_path):
    body = b"SET_A\thttp://x\tKLF1\tGATA1\nSET_B\tna\tTP53\n"
    server.routes["/sets.gmt"] = [{"status": 200, "body": body}]
    out = tmp_path / "sets.gmt"
    dl.download([server.url("/sets.gmt")], out, **_fast())
    assert out.read_bytes() == body


def test_wrong_magic_bytes(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 200, "body": b"PK\x03\x04 a zip, not hdf5" * 50}]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "not a HDF5 file")


def test_500_twice_then_success(server, tmp_path):
    server.routes["/f.h5ad"] = [
        {"status": 500, "body": b"oops"},
        {"status": 503, "body": b"busy"},
        {"status": 200, "body": H5_BODY},
    ]
    out = tmp_path / "f.h5ad"
    dl.download([server.url("/f.h5ad")], out, sha256=H5_SHA, **_fast())
    assert out.read_bytes() == H5_BODY
    assert server.hits("/f.h5ad") == 3


def test_500_forever_gives_up(server, tmp_path):
    server.routes["/f.h5ad"] = [{"status": 500, "body": b"oops"}]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "HTTP 500")
    assert server.hits("/f.h5ad") == 3


def test_404_fails_at_once(server, tmp_path):
    out = tmp_path / "f.h5ad"
    url = server.url("/missing.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "HTTP 404")
    assert server.hits("/missing.h5ad") == 1  # a client error is not retried


def test_connection_refused(tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.h5ad"
    out = tmp_path / "f.h5ad"
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "connection error")


def test_mirror_fallback(server, tmp_path):
    server.routes["/good.h5ad"] = [{"status": 200, "body": H5_BODY}]
    server.routes["/html.h5ad"] = [{"status": 200, "body": HTML_BODY}]
    urls = [server.url("/gone.h5ad"), server.url("/html.h5ad"), server.url("/good.h5ad")]
    out = tmp_path / "f.h5ad"
    dl.download(urls, out, sha256=H5_SHA, **_fast())
    assert out.read_bytes() == H5_BODY
    assert [p for p, _ in server.requests] == ["/gone.h5ad", "/html.h5ad", "/good.h5ad"]


def test_all_mirrors_fail_names_each(server, tmp_path):
    server.routes["/html.h5ad"] = [{"status": 200, "body": HTML_BODY}]
    urls = [server.url("/gone.h5ad"), server.url("/html.h5ad")]
    out = tmp_path / "f.h5ad"
    with pytest.raises(dl.DownloadError) as exc:
        dl.download(urls, out, **_fast())
    _assert_clean_failure(tmp_path, out, exc, urls[0], "HTTP 404")
    _assert_clean_failure(tmp_path, out, exc, urls[1], "HTML/XML page")


def _manifest(tmp_path, rows=()):
    tsv = tmp_path / "checksums.tsv"
    lines = ["\t".join(dl.CHECKSUM_COLUMNS)] + ["\t".join(r) for r in rows]
    tsv.write_text("\n".join(lines) + "\n")
    return tsv


def test_unknown_checksum_is_recorded_then_enforced(server, tmp_path, caplog):
    tsv = _manifest(tmp_path, [("f.h5ad", "", "", "https://example.org/f.h5ad", "a note")])
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    out = tmp_path / "dl" / "f.h5ad"
    with caplog.at_level("INFO", logger=dl.__name__):
        dl.download([server.url("/f.h5ad")], out, checksums_tsv=tsv, **_fast())
    assert "recorded sha256" in caplog.text
    row = dl.read_checksums(tsv)["f.h5ad"]
    assert row["sha256"] == H5_SHA and row["size"] == str(len(H5_BODY))
    assert row["note"] == "a note" and row["url"] == "https://example.org/f.h5ad"
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".checksums*"))

    # Now that it is known, a server handing out other bytes is caught.
    out.unlink()
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY + b"changed"}]
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, checksums_tsv=tsv, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "sha256 mismatch")


def test_new_file_appended_to_manifest(server, tmp_path):
    tsv = _manifest(tmp_path, [("other.h5ad", "ab" * 32, "5", "u", "")])
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    dl.download([server.url("/f.h5ad")], tmp_path / "x" / "f.h5ad", checksums_tsv=tsv, **_fast())
    rows = dl.read_checksums(tsv)
    assert list(rows) == ["other.h5ad", "f.h5ad"]
    assert rows["other.h5ad"]["sha256"] == "ab" * 32
    assert rows["f.h5ad"]["url"] == server.url("/f.h5ad")


def test_require_checksum(server, tmp_path):
    tsv = _manifest(tmp_path)
    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    out = tmp_path / "f.h5ad"
    url = server.url("/f.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, checksums_tsv=tsv, require_checksum=True, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "no sha256 is known")
    assert server.hits("/f.h5ad") == 0  # refused before fetching (the raw file is 60 GB)
    # A known checksum satisfies the requirement, and the manifest learns it.
    dl.download([url], out, sha256=H5_SHA, checksums_tsv=tsv, require_checksum=True, **_fast())
    assert out.read_bytes() == H5_BODY
    assert dl.read_checksums(tsv)["f.h5ad"]["sha256"] == H5_SHA


def test_present_file_with_known_checksum_is_kept(server, tmp_path):
    out = tmp_path / "f.h5ad"
    out.write_bytes(H5_BODY)
    dl.download([server.url("/f.h5ad")], out, sha256=H5_SHA, **_fast())
    assert server.requests == [] and out.read_bytes() == H5_BODY


def test_stale_file_removed_on_failure(server, tmp_path):
    out = tmp_path / "f.h5ad"
    out.write_bytes(b"an old partial file")
    url = server.url("/missing.h5ad")
    with pytest.raises(dl.DownloadError) as exc:
        dl.download([url], out, sha256=H5_SHA, **_fast())
    _assert_clean_failure(tmp_path, out, exc, url, "HTTP 404")


def test_command_line(server, tmp_path, capsys):
    from samsbench import cli

    server.routes["/f.h5ad"] = [{"status": 200, "body": H5_BODY}]
    out = tmp_path / "f.h5ad"
    assert cli.main(
        ["download", "--url", server.url("/nope.h5ad"), "--url", server.url("/f.h5ad"),
         "--sha256", H5_SHA, "--out", os.fspath(out), "--retries", "0"]
    ) == 0
    assert out.read_bytes() == H5_BODY

    assert cli.main(
        ["download", "--url", server.url("/f.h5ad"), "--require-checksum",
         "--out", os.fspath(tmp_path / "g.h5ad")]
    ) == 2
    assert "no sha256 is known" in capsys.readouterr().err


def test_resolve_config_over_builtin():
    assert dl.resolve("replogle.h5ad")["urls"][0].endswith("/data/replogle.h5ad")
    cfg = {"replogle.h5ad": {"urls": ["http://mirror/r.h5ad"], "sha256": "ab"}}
    assert dl.resolve("replogle.h5ad", cfg) == {"urls": ["http://mirror/r.h5ad"], "sha256": "ab"}
    with pytest.raises(dl.DownloadError, match="no download is configured"):
        dl.resolve("unknown.h5ad", cfg)
