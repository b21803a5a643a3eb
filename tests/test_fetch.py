"""`sleepstage fetch sleep-edf`: verified downloads from a local mirror on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import assert_clean_error, run_cli

from sleepstage_cli.errors import InputError
from sleepstage_cli.io import fetch as core
from sleepstage_cli.io.sleepedf_files import parse_numbers, parse_sums, select
from sleepstage_cli.training.reference_splits import reference_night_ids


class Mirror:
    """A folder served over HTTP: counts GETs per path, can corrupt a file or break off mid-file."""

    def __init__(self, root: Path) -> None:
        self.root, self.gets, self.corrupt, self.drops = root, {}, set(), {}
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rel = self.path.lstrip("/")
                mirror.gets[rel] = mirror.gets.get(rel, 0) + 1
                path = mirror.root / rel
                if not path.is_file():
                    self.send_error(404)
                    return
                data = bytearray(path.read_bytes())
                if rel in mirror.corrupt:
                    data[len(data) // 2] ^= 0xFF
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mirror.drops.get(rel, 0) > 0:  # half the file, then the connection is gone
                    mirror.drops[rel] -= 1
                    self.wfile.write(bytes(data[: len(data) // 2]))
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(bytes(data))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/sleep-edfx/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def edf_gets(self) -> int:
        return sum(n for p, n in self.gets.items() if p.endswith(".edf"))


def _write_sums(root: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "SHA256SUMS.txt"]
    (root / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> Path:
    """Three simulated Sleep-EDF cassette nights (SC4001, SC4002, SC4011) in PhysioNet's folders."""
    from sleepstage_cli.simulate import simulate

    root = tmp_path_factory.mktemp("physionet") / "sleep-edfx"
    simulate(root / "sleep-cassette", nights=3, layout="sleep-edf", seed=5, hours=0.25, study="SC")
    (root / "sleep-cassette" / "simulation.json").unlink()
    (root / "RECORDS").write_text("sleep-cassette/SC4001E0-PSG.edf\n")  # listed, never fetched
    _write_sums(root)
    return root.parent


def _serve(root: Path):
    mirror = Mirror(root)
    mirror.thread.start()
    return mirror


@pytest.fixture
def mirror(nights: Path):
    m = _serve(nights)
    yield m
    m.server.shutdown()
    m.server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/sleep-edfx/"


def _leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` other than the dataset's (temporary files of downloads)."""
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".edf")
                  and p.name not in ("SHA256SUMS.txt", "fetch.json", "fetch-needed.txt"))


def test_fetch_verifies_writes_the_layout_prepare_reads_and_skips_on_rerun(mirror: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "sedf"
    proc = run_cli("fetch", "sleep-edf", "--subjects", "0-1", "--base-url", mirror.url, "-o", out)
    assert proc.returncode == 0, proc.stderr
    served = sorted(p.relative_to(mirror.root / "sleep-edfx") for p in (mirror.root / "sleep-edfx").rglob("*.edf"))
    assert sorted(p.relative_to(out) for p in out.rglob("*.edf")) == served
    for rel in served:
        assert (out / rel).read_bytes() == (mirror.root / "sleep-edfx" / rel).read_bytes()
    record = json.loads((out / "fetch.json").read_text())
    assert record["counts"] == {"downloaded": 6, "present": 0, "failed": 0}
    assert {f["status"] for f in record["files"]} == {"downloaded"}
    assert all(f["sha256"] == hashlib.sha256((out / f["path"]).read_bytes()).hexdigest() for f in record["files"])
    assert "downloaded" in proc.stdout and not (out / "fetch-needed.txt").exists()
    assert mirror.edf_gets() == 6 and "RECORDS" not in mirror.gets
    assert _leftovers(out) == []

    again = run_cli("fetch", "sleep-edf", "--subjects", "0-1", "--base-url", mirror.url, "-o", out)
    assert again.returncode == 0, again.stderr
    assert mirror.edf_gets() == 6  # nothing downloaded twice
    assert json.loads((out / "fetch.json").read_text())["counts"] == {"downloaded": 0, "present": 6, "failed": 0}

    data = tmp_path / "data"
    prep = run_cli("prepare", out / "sleep-cassette", "-o", data, "--min-hours", "0", "-j", "1")
    assert prep.returncode == 0, prep.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    assert sorted(n["id"] for n in manifest["nights"]) == ["SC4001", "SC4002", "SC4011"]


def test_a_corrupt_file_is_refused_and_not_kept(mirror: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "sedf"
    bad = "sleep-cassette/SC4002E0-PSG.edf"
    mirror.corrupt.add(f"sleep-edfx/{bad}")
    proc = run_cli("fetch", "sleep-edf", "--base-url", mirror.url, "-o", out, "--retries", "0")
    assert_clean_error(proc, "SC4002E0-PSG.edf", "sha256", "fetch-needed.txt")
    assert not (out / bad).exists()
    assert _leftovers(out) == []
    record = {f["path"]: f for f in json.loads((out / "fetch.json").read_text())["files"]}
    assert record[bad]["status"] == "failed" and "sha256" in record[bad]["error"]
    assert record["sleep-cassette/SC4001E0-PSG.edf"]["status"] == "downloaded"
    assert (out / "fetch-needed.txt").read_text() == f"{mirror.url}{bad}\n"


def test_a_different_file_already_there_is_reported_and_never_overwritten(mirror: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "sedf"
    mine = out / "sleep-cassette" / "SC4001E0-PSG.edf"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"not the recording")  # not fetch's: it names a file only once verified
    proc = run_cli("fetch", "sleep-edf", "--base-url", mirror.url, "-o", out, "--subjects", "0", "--nights", "1")
    assert_clean_error(proc, "SC4001E0-PSG.edf", "another sha256", "left as it is")
    assert mine.read_bytes() == b"not the recording"
    record = {f["path"]: f for f in json.loads((out / "fetch.json").read_text())["files"]}
    assert record["sleep-cassette/SC4001E0-PSG.edf"]["status"] == "failed"
    assert mirror.gets.get("sleep-edfx/sleep-cassette/SC4001E0-PSG.edf", 0) == 0


def test_a_broken_download_is_retried_with_growing_waits_and_never_left_under_its_name(mirror: Mirror,
                                                                                      tmp_path: Path) -> None:
    files, _ = core.read_index(mirror.url, tmp_path, "")
    psg = [f for f in files if f.name == "SC4011E0-PSG.edf"]
    waits: list[float] = []
    hooks = core.Hooks(sleep=waits.append)

    mirror.drops["sleep-edfx/" + psg[0].path] = 2
    [result] = core.fetch_files(psg, mirror.url, tmp_path, retries=3, hooks=hooks)
    assert (result.status, result.attempts) == ("downloaded", 3)
    assert waits == [1.0, 2.0]  # backing off
    assert hashlib.sha256((tmp_path / psg[0].path).read_bytes()).hexdigest() == psg[0].sha256

    (tmp_path / psg[0].path).unlink()
    waits.clear()
    mirror.drops["sleep-edfx/" + psg[0].path] = 5
    [result] = core.fetch_files(psg, mirror.url, tmp_path, retries=1, hooks=hooks)
    assert result.status == "failed" and "broke off" in result.error and waits == [1.0]
    assert list((tmp_path / "sleep-cassette").iterdir()) == []  # no partial file under its name
    assert not (tmp_path / core.PARTIAL).exists()  # and pooch's temporary file is gone too

    # What a killed run left in the hidden staging folder is cleared by the next run.
    (tmp_path / core.PARTIAL).mkdir()
    (tmp_path / core.PARTIAL / "tmpk1lled").write_bytes(b"half a file")
    mirror.drops.clear()
    [result] = core.fetch_files(psg, mirror.url, tmp_path, retries=0, hooks=hooks)
    assert result.status == "downloaded" and not (tmp_path / core.PARTIAL).exists()


def test_offline_says_which_urls_are_needed_and_where_files_go(mirror: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "sedf"
    offline = _closed_port_url()
    proc = run_cli("fetch", "sleep-edf", "--subjects", "0-19", "--base-url", offline, "-o", out, "--retries", "0")
    assert_clean_error(proc, f"{offline}SHA256SUMS.txt", "no network", str(out), "sleep-cassette/SC4ssNE0-PSG.edf",
                       "subjects 0-19", "run this command again")

    # Files downloaded by hand (here: by a run with network) are verified without network on the next run...
    assert run_cli("fetch", "sleep-edf", "--base-url", mirror.url, "-o", out, "--nights", "1").returncode == 0
    gets = mirror.edf_gets()
    proc = run_cli("fetch", "sleep-edf", "--base-url", offline, "-o", out, "--nights", "1", "--retries", "0")
    assert proc.returncode == 0, proc.stderr
    assert "using the list kept in" in proc.stderr and mirror.edf_gets() == gets
    # ... and those still missing are listed, URL by URL, for a download by hand.
    proc = run_cli("fetch", "sleep-edf", "--base-url", offline, "-o", out, "--retries", "0")
    assert_clean_error(proc, "2 of 6 file(s) not fetched", "connection refused", "fetch-needed.txt", str(out))
    assert (out / "fetch-needed.txt").read_text().splitlines() == [
        f"{offline}sleep-cassette/SC4002E0-PSG.edf", f"{offline}sleep-cassette/{_hypnogram(out, mirror, 'SC4002')}"]


def _hypnogram(out: Path, mirror: Mirror, night: str) -> str:
    return next((mirror.root / "sleep-edfx" / "sleep-cassette").glob(f"{night}E?-Hypnogram.edf")).name


@pytest.fixture
def listing(tmp_path: Path):
    """A mirror of small stand-in files: SC subjects 0, 1, 13, 20 and 40, ST subjects 1 and 2."""
    root = tmp_path / "listing" / "sleep-edfx"
    names = [f"sleep-cassette/SC4{s:02d}{n}E0-PSG.edf" for s in (0, 1, 13, 20, 40) for n in (1, 2)]
    names += [f"sleep-cassette/SC4{s:02d}{n}EC-Hypnogram.edf" for s in (0, 1, 13, 20, 40) for n in (1, 2)]
    names += [f"sleep-telemetry/ST7{s:02d}{n}J0-PSG.edf" for s in (1, 2) for n in (1, 2)]
    names += [f"sleep-telemetry/ST7{s:02d}{n}JP-Hypnogram.edf" for s in (1, 2) for n in (1, 2)]
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())
    names.remove("sleep-cassette/SC4132E0-PSG.edf")  # as in the real dataset, night SC4132 is absent
    names.remove("sleep-cassette/SC4132EC-Hypnogram.edf")
    (root / "sleep-cassette/SC4132E0-PSG.edf").unlink()
    (root / "sleep-cassette/SC4132EC-Hypnogram.edf").unlink()
    _write_sums(root)
    m = _serve(root.parent)
    yield m
    m.server.shutdown()
    m.server.server_close()


def _fetched(out: Path) -> list[str]:
    return sorted(f["path"].split("/")[1][:6] for f in json.loads((out / "fetch.json").read_text())["files"]
                  if f["path"].endswith("PSG.edf"))


def test_subjects_nights_and_study_choose_the_files(listing: Mirror, tmp_path: Path) -> None:
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", tmp_path / "a", "--subjects", "0,13-20",
                   "--nights", "2")
    assert proc.returncode == 0, proc.stderr
    assert _fetched(tmp_path / "a") == ["SC4002", "SC4202"]
    assert sorted(p.name for p in (tmp_path / "a" / "sleep-cassette").iterdir()) == [
        "SC4002E0-PSG.edf", "SC4002EC-Hypnogram.edf", "SC4202E0-PSG.edf", "SC4202EC-Hypnogram.edf"]
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", tmp_path / "b", "--study", "ST")
    assert proc.returncode == 0, proc.stderr
    assert _fetched(tmp_path / "b") == ["ST7011", "ST7012", "ST7021", "ST7022"]
    assert not (tmp_path / "b" / "sleep-cassette").exists()
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", tmp_path / "c", "--subjects", "50-60")
    assert_clean_error(proc, "no file for this choice", "subjects 50-60", "SHA256SUMS.txt")
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", tmp_path / "c", "--nights", "3")
    assert_clean_error(proc, "--nights", "1-2")


def test_a_reference_split_picks_its_nights(listing: Mirror, tmp_path: Path) -> None:
    out = tmp_path / "split"
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", out, "--subjects", "sleepedf-20")
    assert proc.returncode == 0, proc.stderr
    split = set(reference_night_ids("sleepedf-20"))
    listed = {"SC4001", "SC4002", "SC4011", "SC4012", "SC4131", "SC4201", "SC4202", "SC4401", "SC4402"}
    assert _fetched(out) == sorted(listed & split) == ["SC4001", "SC4002", "SC4011", "SC4012", "SC4131"]
    record = json.loads((out / "fetch.json").read_text())
    assert record["nights_not_listed"] == sorted(split - listed)
    assert "not in the dataset's list" in proc.stderr
    # The authors' n01_1 is subject 0's first night; the 39 nights are subjects 0-19 without SC4132.
    assert len(split) == 39 and "SC4132" not in split and {"SC4001", "SC4192"} <= split
    assert len(reference_night_ids("sleepedf-78")) == 153


def test_the_list_is_read_in_its_spellings() -> None:
    sha = "ab" * 32
    text = (f"{sha}  sleep-cassette/SC4001E0-PSG.edf\n{sha.upper()} *sleep-cassette/SC4001EC-Hypnogram.edf\n"
            f"{sha} ./sleep-telemetry/ST7011J0-PSG.edf\n{sha}  RECORDS\n{sha}  sleep-cassette/../x.edf\nnoise\n")
    files = parse_sums(text, "SUMS")
    assert [(f.path, f.study, f.subject, f.night, f.night_id) for f in files] == [
        ("sleep-cassette/SC4001E0-PSG.edf", "SC", 0, 1, "SC4001"),
        ("sleep-cassette/SC4001EC-Hypnogram.edf", "SC", 0, 1, "SC4001"),
        ("sleep-telemetry/ST7011J0-PSG.edf", "ST", 1, 1, "ST7011")]
    assert all(f.sha256 == sha for f in files)
    assert select(files, "ST")[0] == [files[2]]
    with pytest.raises(InputError, match="SUMS"):
        parse_sums(f"{sha}  RECORDS\n", "SUMS")
    assert parse_numbers("0-2,7", "--subjects", 0, 99) == {0, 1, 2, 7}
    with pytest.raises(InputError, match="--subjects"):
        parse_numbers("3-1", "--subjects", 0, 99)


def test_fetch_refuses_bad_options_before_any_download(listing: Mirror, tmp_path: Path) -> None:
    proc = run_cli("fetch", "mass", "--base-url", listing.url, "-o", tmp_path / "x")
    assert_clean_error(proc, "mass")
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url, "-o", tmp_path / "x", "--study", "XY")
    assert_clean_error(proc, "--study")
    proc = run_cli("fetch", "sleep-edf", "--base-url", listing.url + "nothing/", "-o", tmp_path / "x")
    assert_clean_error(proc, "HTTP 404", "nothing/SHA256SUMS.txt", "--base-url")
    assert listing.edf_gets() == 0
