"""common/data.py: data root, registry, and the real download path against a loopback server."""
import gzip
import hashlib
import http.server
import io
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from common import data
from common.data import REPO_ROOT, Entry, FileSpec, book_file, data_root, extract_archive
from common.errors import DataError, run_cli
from tests.common.cli import assert_one_error_line, files_under, run_in_subprocess, run_main

WINE = "p1ch4/tabular-wine/winequality-white.csv"
WINE_URL_PATH = "/" + WINE
NAMES = ["p1ch2", "p1ch3", "image-dog", "image-cats", "dicom-ct", "wine", "bikes", "jane-austen",
         "audio-chirp", "video-cockatoo", "birds-vs-airplanes", "cls-val-example", "luna-csv",
         "luna-models", "cifar10", "resnet101", "horse2zebra", "luna-annotations",
         *[f"luna-subset{i}" for i in range(10)]]


@pytest.fixture
def mirror(serve, book_data, monkeypatch):
    """A loopback server over the book's files, set as $DLWPT_MIRROR."""
    srv = serve(book_data)
    monkeypatch.setenv("DLWPT_MIRROR", srv.url)
    return srv


def write_tar_gz(path, members):
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def write_zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, payload in members.items():
            zf.writestr(name, payload)
    return path


# --- data root, book_file, run_cli ---------------------------------------------------------------

def test_data_root_precedence_flag_then_env_then_repo(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DLWPT_DATA", str(tmp_path / "env"))
    assert data_root(str(tmp_path / "flag")) == tmp_path / "flag"
    assert data_root() == tmp_path / "env"
    data.main(["list", "--data-dir", str(tmp_path / "flag")])
    assert capsys.readouterr().out.splitlines()[0] == f"data root: {tmp_path / 'flag'}"
    monkeypatch.delenv("DLWPT_DATA")
    assert data_root() == REPO_ROOT / "data"


def test_book_file_error_names_the_download_command(tmp_path):
    with pytest.raises(DataError) as e:
        book_file(WINE, data_dir=tmp_path, name="wine")
    assert str(e.value) == (f"{tmp_path / WINE} not found; get it with:"
                            "  python -m common.data download wine")
    (tmp_path / WINE).parent.mkdir(parents=True)
    (tmp_path / WINE).write_text("x")
    assert book_file(WINE, data_dir=tmp_path, name="wine") == tmp_path / WINE


def test_run_cli_turns_data_error_into_one_line_and_exit_2(tmp_path, capsys):
    def failing(argv):
        raise DataError("the thing is missing")

    with pytest.raises(SystemExit) as e:
        run_cli(failing)
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: the thing is missing\n"

    with pytest.raises(SystemExit) as e:
        run_cli(data.main, ["download", "no-such-name", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert err.count("\n") == 1 and err.startswith("error: unknown data name no-such-name")
    assert not any(tmp_path.iterdir())


def test_module_entry_point_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "common.data", "download", "no-such-name",
                             "--data-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: unknown data name no-such-name")
    assert "Traceback" not in result.stderr


# --- the registry --------------------------------------------------------------------------------

def test_registry_names_layout_and_sources():
    reg = data.registry()
    assert set(NAMES) <= set(reg)
    assert [f.relpath for f in reg["p1ch2"].files] == [
        "p1ch2/bobby.jpg", "p1ch2/horse.jpg", "p1ch2/imagenet_classes.txt", "p1ch2/mnist/mnist.pth"]
    dicom = reg["dicom-ct"].files
    assert len(dicom) == 99 and len(reg["luna-models"].files) == 5
    folder = "p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083/"    # two spaces, kept
    assert all(f.relpath.startswith(folder) for f in dicom)
    quoted = "p1ch4/volumetric-dicom/2-LUNG%203.0%20%20B70f-04083/000000.dcm"
    assert data.source(dicom[0]) == data.BOOK_BASE_URL + quoted
    assert data.source(dicom[0], "http://127.0.0.1:8000/m") == "http://127.0.0.1:8000/m/" + quoted
    assert data.source(dicom[0], "/srv/m") == Path("/srv/m") / dicom[0].relpath
    assert [f.relpath for f in reg["luna-csv"].files] == [
        "part2/luna/annotations.csv", "part2/luna/annotations_with_malignancy.csv",
        "part2/luna/candidates.csv"]
    assert reg["horse2zebra"].files[0].relpath == "p1ch2/horse2zebra_0.4.0.pth"
    assert reg["birds-vs-airplanes"].files[0].relpath == "p1ch6/birds_vs_airplanes.pt"
    assert reg["cls-val-example"].files[0].relpath == "p3ch15/cls_val_example.pt"

    cifar = reg["cifar10"]
    assert cifar.extract_to == "cifar-10-batches-py"
    assert cifar.files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert cifar.files[0].url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    resnet = reg["resnet101"].files[0]
    assert resnet.relpath == "weights/resnet101-63fe2227.pth" and resnet.sha256 == "63fe2227"
    assert resnet.url == "https://download.pytorch.org/models/resnet101-63fe2227.pth"
    for i in range(10):
        entry = reg[f"luna-subset{i}"]
        record = "3723295" if i <= 6 else "4121926"
        assert entry.extract_to == f"luna/subset{i}"
        assert f"/records/{record}/files/subset{i}.zip" in entry.files[0].url
        assert len(entry.files[0].md5) == 32 and entry.files[0].size > 6e9
    assert [f.relpath for f in reg["luna-annotations"].files] == [
        "luna/annotations.csv", "luna/candidates.csv"]

    for entry in reg.values():
        for f in entry.files:
            assert f.sha256 is None or len(f.sha256) in (8, 64)
            assert (f.sha256 or f.md5) or f.size is None   # no checksum: nothing is claimed


@pytest.mark.realdata
def test_book_table_matches_the_book_files(book_data):
    checked = 0
    for entry in data.registry().values():
        for f in entry.files:
            if f.url is None and f.size is not None:
                path = book_data / f.relpath
                assert path.stat().st_size == f.size, f.relpath
                assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256, f.relpath
                checked += 1
    assert checked == 4 + 2 + 1 + 3 + 99 + 1 + 5 + 1 + 1 + 1 + 1 + 1 + 2 + 5


def test_verify_sha256_prefix_md5_size_and_unknown(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    md5 = hashlib.md5(b"weights").hexdigest()
    assert data.verify(FileSpec("w.pth", None, None, sha[:8], None), path)[0] is True
    assert data.verify(FileSpec("w.pth", None, 7, sha, md5), path)[0] is True
    ok, _, why = data.verify(FileSpec("w.pth", None, None, "00000000", None), path)
    assert ok is False and "sha256" in why
    ok, _, why = data.verify(FileSpec("w.pth", None, 8, sha, None), path)
    assert ok is False and "size 7 bytes, expected 8" in why
    assert data.verify(FileSpec("w.pth", None, None, None, "0" * 32), path)[0] is False
    assert data.verify(FileSpec("w.pth", None, None, None, None), path) == (
        None, sha, "no published checksum")


# --- the download path against a loopback server -------------------------------------------------

@pytest.mark.realdata
def test_download_verifies_and_skips_what_is_present(mirror, book_data, tmp_path, capsys):
    paths = data.main(["download", "p1ch3", "wine", "--data-dir", str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        "p1ch3/ourpoints.t", "p1ch3/ourpoints.hdf5", WINE]
    for p in paths:
        assert p.read_bytes() == (book_data / p.relative_to(tmp_path)).read_bytes()
    assert not list(tmp_path.rglob("*.part"))
    assert [rng for _, rng in mirror.log] == [None, None, None]
    out = capsys.readouterr().out
    assert "p1ch3: 2 downloaded and verified" in out and "wine: 1 downloaded and verified" in out

    data.main(["download", "wine", "p1ch3", "--data-dir", str(tmp_path)])
    assert len(mirror.log) == 3                                # nothing fetched again
    assert "wine: 1 already present and verified" in capsys.readouterr().out


@pytest.mark.realdata
def test_interrupted_transfer_resumes_with_range(mirror, book_data, tmp_path):
    mirror.truncations = 1                                     # the first response stops at 1000 B
    [path] = data.download(["wine"], tmp_path)
    assert path.read_bytes() == (book_data / WINE).read_bytes()
    assert mirror.log == [(WINE_URL_PATH, None), (WINE_URL_PATH, "bytes=1000-")]


@pytest.mark.realdata
def test_interrupted_command_keeps_the_part_file_and_the_next_one_resumes(mirror, book_data,
                                                                          tmp_path):
    book = (book_data / WINE).read_bytes()
    part = tmp_path / (WINE + ".part")
    mirror.truncations = 10**6                                 # every response stops at 1000 B
    with pytest.raises(DataError, match="run the same command again to resume") as e:
        data.download(["wine"], tmp_path)
    assert "\n" not in str(e.value)
    assert part.read_bytes() == book[:data.ATTEMPTS * 1000]
    assert not (tmp_path / WINE).exists()

    mirror.truncations, mirror.log[:] = 0, []
    data.download(["wine"], tmp_path)
    assert mirror.log == [(WINE_URL_PATH, f"bytes={data.ATTEMPTS * 1000}-")]
    assert (tmp_path / WINE).read_bytes() == book and not part.exists()


@pytest.mark.realdata
def test_corrupted_download_is_deleted_and_reported(mirror, tmp_path):
    mirror.corrupt = True
    with pytest.raises(DataError) as e:
        data.download(["wine"], tmp_path)
    message = str(e.value)
    assert "\n" not in message
    assert "checksum failed" in message and "deleted the partial file" in message
    assert not (tmp_path / WINE).exists()
    assert not (tmp_path / (WINE + ".part")).exists()


@pytest.mark.realdata
def test_server_that_ignores_range_starts_over(mirror, book_data, tmp_path, capsys):
    mirror.ignore_range = True
    part = tmp_path / (WINE + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"junk" * 750)                            # must not survive in the result
    data.download(["wine"], tmp_path)
    assert mirror.log == [(WINE_URL_PATH, "bytes=3000-")]
    assert (tmp_path / WINE).read_bytes() == (book_data / WINE).read_bytes()
    assert "ignored the resume request" in capsys.readouterr().out


@pytest.mark.realdata
def test_mirror_folder_is_copied_with_the_same_checks(book_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DLWPT_MIRROR", str(book_data))
    paths = data.download(["image-cats"], tmp_path / "root")
    assert [p.name for p in paths] == ["cat1.png", "cat2.png", "cat3.png"]
    for p in paths:
        assert p.read_bytes() == (book_data / "p1ch4/image-cats" / p.name).read_bytes()
    assert not list(tmp_path.rglob("*.part"))

    bad = tmp_path / "bad-mirror"
    shutil.copytree(book_data / "p1ch4/image-dog", bad / "p1ch4/image-dog")
    (bad / "p1ch4/image-dog/bobby.jpg").write_bytes(b"not a dog")
    monkeypatch.setenv("DLWPT_MIRROR", str(bad))
    with pytest.raises(DataError, match="checksum failed"):
        data.download(["image-dog"], tmp_path / "root")
    assert not (tmp_path / "root/p1ch4/image-dog/bobby.jpg").exists()
    with pytest.raises(DataError, match="not found in the mirror folder"):
        data.download(["wine"], tmp_path / "root")


@pytest.mark.realdata
def test_list_shows_size_presence_and_verification(book_data, tmp_path, capsys):
    for rel in (WINE, "p1ch3/ourpoints.t", *[f.relpath for f in data.registry()["bikes"].files]):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(book_data / rel, tmp_path / rel)
    with open(tmp_path / "p1ch4/bike-sharing-dataset/day.csv", "ab") as f:
        f.write(b"tampered\n")
    rows = data.main(["list", "--data-dir", str(tmp_path)])
    out = capsys.readouterr().out
    by_name = {r["name"]: r for r in rows}
    assert list(by_name) == list(data.registry())
    assert by_name["wine"]["status"] == "verified" and by_name["wine"]["size"] == "258.2 KiB"
    assert by_name["p1ch3"]["status"] == "incomplete (1 of 2 present)"
    assert by_name["bikes"]["status"] == "CHECKSUM MISMATCH (1 of 5)"
    assert by_name["dicom-ct"]["files"] == 99 and by_name["dicom-ct"]["status"] == "missing"
    assert by_name["horse2zebra"]["size"] == "?" and by_name["luna-csv"]["size"].endswith("+")
    assert by_name["cifar10"]["size"] == "162.6 MiB"
    wine_line = next(line for line in out.splitlines() if line.startswith("wine "))
    assert "1" in wine_line.split() and "258.2 KiB" in wine_line and "verified" in wine_line
    assert out.rstrip().endswith("python -m common.data download NAME [NAME...]")


def test_file_without_checksum_is_kept_and_its_sha256_printed(serve, tmp_path, capsys):
    (tmp_path / "srv").mkdir()
    weights = io.BytesIO()
    torch.save({"w": torch.ones(2)}, weights)
    (tmp_path / "srv/model.pth").write_bytes(weights.getvalue())
    srv = serve(tmp_path / "srv")
    entry = Entry("model", "test", (FileSpec("w/model.pth", srv.url + "model.pth", None, None,
                                             None),), None)
    [path] = data.download_entry(entry, tmp_path / "root")
    assert path.read_bytes() == weights.getvalue()
    out = capsys.readouterr().out
    assert "could not be verified" in out and hashlib.sha256(weights.getvalue()).hexdigest() in out
    assert data.entry_status(entry, tmp_path / "root") == "present, not verifiable"


# --- archives ------------------------------------------------------------------------------------

def test_archive_is_verified_unpacked_and_deleted(serve, tmp_path, capsys):
    members = {"cifar-10-batches-py/data_batch_1": b"abc" * 1000,
               "cifar-10-batches-py/batches.meta": b"meta"}
    (tmp_path / "srv").mkdir()
    archive = write_tar_gz(tmp_path / "srv/fake.tar.gz", members)
    srv = serve(tmp_path / "srv")
    spec = FileSpec("fake.tar.gz", srv.url + "fake.tar.gz", archive.stat().st_size, None,
                    hashlib.md5(archive.read_bytes()).hexdigest())
    entry = Entry("fake-cifar", "test", (spec,), "cifar-10-batches-py")
    root = tmp_path / "root"
    assert data.entry_status(entry, root) == "missing"

    [target] = data.download_entry(entry, root)
    assert target == root / "cifar-10-batches-py"
    assert (target / "data_batch_1").read_bytes() == b"abc" * 1000
    assert (target / "batches.meta").read_bytes() == b"meta"
    assert not (root / "fake.tar.gz").exists()
    assert "deleted the archive fake.tar.gz" in capsys.readouterr().out
    assert data.entry_status(entry, root) == "verified (unpacked)"
    data.download_entry(entry, root)
    assert len(srv.log) == 1                                   # already unpacked: no download
    assert "already unpacked from a verified archive" in capsys.readouterr().out

    kept_root = tmp_path / "kept"
    data.download_entry(entry, kept_root, keep_archive=True)
    assert (kept_root / "fake.tar.gz").read_bytes() == archive.read_bytes()
    assert "kept the archive" in capsys.readouterr().out

    wrong = Entry("fake-cifar", "test", (spec._replace(md5="0" * 32),), "cifar-10-batches-py")
    with pytest.raises(DataError, match="checksum failed"):
        data.download_entry(wrong, tmp_path / "wrong")
    assert not (tmp_path / "wrong/cifar-10-batches-py").exists()
    assert not list((tmp_path / "wrong").iterdir())


def test_zip_with_one_top_folder_unpacks_into_the_target(tmp_path):
    nested = write_zip(tmp_path / "subset0.zip", {"subset0/a.mhd": b"m", "subset0/a.raw": b"r"})
    target = extract_archive(nested, tmp_path / "root/luna/subset0")
    assert sorted(p.name for p in target.iterdir()) == ["a.mhd", "a.raw"]
    flat = write_zip(tmp_path / "flat.zip", {"b.mhd": b"m", "b.raw": b"r"})
    target = extract_archive(flat, tmp_path / "root/luna/subset1")
    assert sorted(p.name for p in target.iterdir()) == ["b.mhd", "b.raw"]
    assert sorted(p.name for p in (tmp_path / "root/luna").iterdir()) == ["subset0", "subset1"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("evil", ["../evil.txt", "ok/../../evil.txt", "/tmp/dlwpt-evil.txt"])
def test_archive_members_outside_the_target_are_refused(tmp_path, kind, evil):
    members = {"fine/a.txt": b"a", evil: b"evil"}
    write = write_zip if kind == "zip" else write_tar_gz
    archive = write(tmp_path / f"evil.{kind}", members)
    root = tmp_path / "root"
    with pytest.raises(DataError, match="outside"):
        extract_archive(archive, root / "out")
    assert not list(tmp_path.rglob("evil.txt"))
    assert not root.exists() or not list(root.iterdir())       # nothing unpacked, no staging left


def test_tar_links_are_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        link = tarfile.TarInfo("out/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    with pytest.raises(DataError, match="links and special files"):
        extract_archive(archive, tmp_path / "root/out")
    assert not (tmp_path / "root/out").exists()


# --- bad input at the downloader's entry point (issue 10, class 5) -------------------------------

class EndlessHandler(http.server.BaseHTTPRequestHandler):
    """Serves `srv.body` for any path, then keeps sending up to 64 MiB more; with
    `srv.claim_length`, Content-Length says so up front. Records what it managed to send."""

    def do_GET(self):
        srv = self.server
        self.send_response(200)
        if srv.claim_length:
            self.send_header("Content-Length", str(len(srv.body) + (64 << 20)))
        self.end_headers()
        srv.sent = 0
        try:
            self.wfile.write(srv.body)
            srv.sent = len(srv.body)
            block = b"x" * (64 << 10)
            for _ in range(1024):
                self.wfile.write(block)
                srv.sent += len(block)
        except OSError:                    # the client stopped reading and closed
            pass
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture
def endless(serve):
    srv = serve(None, EndlessHandler)
    srv.body, srv.claim_length, srv.sent = b"", False, 0
    return srv


@pytest.mark.parametrize("claim_length", [True, False], ids=["content-length", "no-length"])
def test_a_server_that_keeps_sending_is_cut_at_the_registry_size(endless, tmp_path, capsys,
                                                                  monkeypatch, claim_length):
    endless.body, endless.claim_length = b"a;b\n1;2\n", claim_length
    monkeypatch.setenv("DLWPT_MIRROR", endless.url)
    code, err = run_main(data.main, ["download", "wine", "--data-dir", tmp_path], capsys)
    assert_one_error_line(code, err, "winequality-white.csv", "264,426", "registry lists",
                          "nothing kept")
    assert files_under(tmp_path) == ["p1ch4", "p1ch4/tabular-wine"]      # no .part, no file
    assert endless.sent < 48 << 20           # the client hung up long before the 64 MiB


@pytest.mark.parametrize("claim_length, most", [(True, 64 << 10), (False, 264_426 + (64 << 10))],
                         ids=["content-length", "no-length"])
def test_the_client_reads_no_more_than_the_registry_size(endless, tmp_path, capsys, monkeypatch,
                                                        claim_length, most):
    """What the server manages to send is the sockets' buffers (megabytes on loopback); what
    the client reads stops at the registry's 264,426 bytes and one more (with a Content-Length
    that says more, at the headers)."""
    import socket
    import threading

    received = []
    recv_into = socket.socket.recv_into

    def counting(self, *args, **kwargs):
        n = recv_into(self, *args, **kwargs)
        if threading.current_thread() is threading.main_thread():     # the client's reads
            received.append(n)
        return n

    monkeypatch.setattr(socket.socket, "recv_into", counting)
    endless.body, endless.claim_length = b"a;b\n1;2\n", claim_length
    monkeypatch.setenv("DLWPT_MIRROR", endless.url)
    code, err = run_main(data.main, ["download", "wine", "--data-dir", tmp_path], capsys)
    assert_one_error_line(code, err, "winequality-white.csv", "nothing kept")
    assert 0 < sum(received) < most


def html_mirror(tmp_path):
    page = b"<!DOCTYPE html>\n<html><body>Rate limit exceeded</body></html>\n"
    (tmp_path / "srv/p1ch2").mkdir(parents=True)
    (tmp_path / "srv/p1ch2/horse2zebra_0.4.0.pth").write_bytes(page)
    return page


def test_an_html_page_instead_of_an_unchecksummed_pth_is_refused(serve, tmp_path, capsys,
                                                                 monkeypatch):
    page = html_mirror(tmp_path)
    monkeypatch.setenv("DLWPT_MIRROR", serve(tmp_path / "srv").url)
    root = tmp_path / "root"
    code, err = run_main(data.main, ["download", "horse2zebra", "--data-dir", root], capsys)
    assert_one_error_line(code, err, "p1ch2/horse2zebra_0.4.0.pth", "an HTML page, not a .pth",
                          f"sha256 {hashlib.sha256(page).hexdigest()}", "deleted it")
    assert files_under(root) == ["p1ch2"]
    (root / "p1ch2/horse2zebra_0.4.0.pth").write_bytes(page)             # saved by hand
    assert data.entry_status(data.registry()["horse2zebra"], root) == \
        "WRONG KIND OF FILE (1 of 1)"


@pytest.mark.parametrize("name, head, why", [
    ("w.pth", b"<html><head>404</head>", "an HTML page, not a .pth file"),
    ("w.pth", b"plain text", "does not start like a .pth file"),
    ("c.csv", b"seriesuid,x\n\xff\xfe\x00junk" + b"x" * 10, "byte 12 is not UTF-8"),
    ("c.csv", b"", "empty"),
    ("ct.dcm", b"\0" * 200, "does not start like a .dcm file"),
])
def test_wrong_kind_names_what_is_wrong(tmp_path, name, head, why):
    (tmp_path / name).write_bytes(head)
    assert why in data.wrong_kind(tmp_path / name)


def test_right_kinds_pass(tmp_path):
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(1)}, buffer)
    for name, content in (("w.pth", buffer.getvalue()), ("c.csv", "seriesuid,é\n1,2\n".encode()),
                          ("d.dcm", b"\0" * 128 + b"DICM...")):
        (tmp_path / name).write_bytes(content)
        assert data.wrong_kind(tmp_path / name) == ""


def test_data_dir_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    for command in (["download", "wine"], ["list"]):
        code, err = run_main(data.main, [*command, "--data-dir", tmp_path / "file"], capsys)
        assert_one_error_line(code, err, f"--data-dir {tmp_path / 'file'}", "a file")
    assert files_under(tmp_path) == ["file"]


@pytest.mark.realdata
def test_read_only_data_dir_is_one_line(book_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DLWPT_MIRROR", str(book_data))
    (tmp_path / "ro").mkdir()
    [(code, err)] = run_in_subprocess(
        [("common.data", ["download", "wine", "--data-dir", tmp_path / "ro"])],
        read_only=tmp_path / "ro")
    assert_one_error_line(code, err, f"--data-dir {tmp_path / 'ro'}", "not writable")
    assert files_under(tmp_path / "ro") == []


@pytest.mark.realdata
def test_full_disk_while_copying_from_a_mirror_folder(book_data, tmp_path, monkeypatch):
    monkeypatch.setenv("DLWPT_MIRROR", str(book_data))
    [(code, err)] = run_in_subprocess(
        [("common.data", ["download", "wine", "--data-dir", tmp_path])], fsize=64 << 10)
    assert_one_error_line(code, err, "winequality-white.csv.part: cannot write: the disk is full")
    assert files_under(tmp_path) == ["p1ch4", "p1ch4/tabular-wine"]      # no .part left


def tar_bytes(members):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def truncated_archives():
    full = tar_bytes({"cifar-10-batches-py/a": b"a" * 2000, "cifar-10-batches-py/b": b"b" * 9})
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as f:
        f.write(full)
    empty = io.BytesIO()
    with zipfile.ZipFile(empty, "w"):
        pass
    whole_zip = io.BytesIO()
    with zipfile.ZipFile(whole_zip, "w") as zf:
        zf.writestr("cifar-10-batches-py/a", b"a" * 5000)
    return {
        "tar cut at a member": (full[:512 + 2048], "truncated (the tar ends without"),
        "tar cut in a member": (full[:1000], "damaged or truncated"),
        "tar.gz cut": (gz.getvalue()[:-30], "damaged or truncated"),
        "empty zip": (empty.getvalue(), "holds no files"),
        "zip cut": (whole_zip.getvalue()[:-40], "damaged or truncated"),
    }


@pytest.mark.parametrize("case", list(truncated_archives()))
def test_a_truncated_archive_is_an_error_not_a_folder(serve, tmp_path, capsys, case):
    payload, words = truncated_archives()[case]
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv/a.tar.gz").write_bytes(payload)
    srv = serve(tmp_path / "srv")
    spec = FileSpec("a.tar.gz", srv.url + "a.tar.gz", len(payload), None,
                    hashlib.md5(payload).hexdigest())       # verified: the damage is inside
    entry = Entry("fake", "test", (spec,), "cifar-10-batches-py")
    root = tmp_path / "root"
    code, err = run_main(lambda argv: data.download_entry(entry, root), [], capsys)
    assert_one_error_line(code, err, "a.tar.gz", words)
    assert files_under(root) == ["a.tar.gz"]                # the archive; no folder, no staging


def test_zip_symlinks_are_refused_as_tar_links_are(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        link = zipfile.ZipInfo("out/passwd")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(DataError, match="refusing member 'out/passwd': links and special"):
        extract_archive(archive, tmp_path / "root/out")
    assert files_under(tmp_path / "root") == []


@pytest.mark.realdata
def test_luna_models_note_which_checkpoints_load(book_data):
    """What `list` says of luna-models: the classifier keys of ch10's LunaModel are in the 2020
    checkpoint only; the two named older ones use another layout."""
    from ch10_luna.model import LunaModel

    keys = set(LunaModel().state_dict())
    files = {f.relpath.split("/")[-1]: f for f in data.registry()["luna-models"].files}
    loads = {name for name in files if name.startswith(("cls", "alternate_cls")) and
             set(torch.load(book_data / files[name].relpath, weights_only=True,
                            map_location="cpu")["model_state"]) == keys}
    assert loads == {"cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"}
    about = data.registry()["luna-models"].about
    assert "3 of the 5 load" in about and "cls_2019-06-23" in about and \
        "alternate_cls_2019-06-16" in about


def test_a_full_disk_while_unpacking_says_so_and_leaves_nothing(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(tar_bytes({"big.bin": b"\0" * (256 << 10)}))
    code = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))
        from pathlib import Path
        from common.data import extract_archive
        from common.errors import run_cli
        run_cli(lambda argv: extract_archive(Path({str(archive)!r}),
                                             Path({str(tmp_path / "out")!r})))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO_ROOT)
    line = assert_one_error_line(result.returncode, result.stderr)     # after the progress bar
    assert line == (f"error: {archive}: cannot unpack into {tmp_path}: the disk is full or the "
                    "file is over a size limit (File too large)")
    assert files_under(tmp_path) == ["a.tar"]
