"""Bad conditions while writing outputs, table-driven (issue 14: B1, B2, B3, B5, B7, B29).

Each row of ``SEGMENT_ROWS`` is a state of the output folder (or a fault), the exit code of
``cellpose-nb segment``, phrases its messages must contain, and a check that nothing of the
user's was lost and no partial set or temporary stayed; ``EXPORT_ROWS`` does the same for
:func:`cellpose_nb.export.export_all`.  The interrupt tests kill a real ``segment`` process
in the middle of a write (SIGTERM, and SIGKILL between two renames) and check that the
re-run resumes to the same outputs as an uninterrupted run.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import roifile
import skimage.io
import tifffile

from cellpose_nb import export as E
from cellpose_nb.atomic import stale_temporaries
from cellpose_nb.cli import main
from cellpose_nb.cli.segment import _read_marker, marker_path
from cellpose_nb.data import make_synthetic

NAMES = ("im0", "im1", "im2")
AS_ROOT = os.geteuid() == 0  # root ignores file modes: permission errors are then raised by patches


def _write_images(folder, names=NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        s = make_synthetic((64, 64), n_cells=8, diameter=12, kind="nuclei", seed=k)
        tifffile.imwrite(folder / f"{name}_img.tif", s.image[..., 0] if s.image.ndim == 3 else s.image)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The outputs of an uninterrupted run over the three images (and the input folder)."""
    root = tmp_path_factory.mktemp("reference")
    _write_images(root / "in")
    assert main(["segment", str(root / "in"), "--out", str(root / "ref")]) == 0
    return root


@pytest.fixture()
def work(tmp_path, reference):
    """A fresh copy of the input folder; ``out`` does not exist yet."""
    shutil.copytree(reference / "in", tmp_path / "in")
    return tmp_path


def _argv(work, *extra):
    return ["segment", str(work / "in"), "--out", str(work / "out"), *extra]


def _snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _temporaries(folder):
    return sorted(p.name for p in Path(folder).rglob("*") if ".part" in p.name)


def _outputs(out, name):
    return sorted(p.name for p in Path(out).glob(f"{name}_*"))


def _assert_complete_and_correct(out, ref, names=NAMES):
    """Every image has its five outputs and a complete marker, equal to the reference run."""
    assert _temporaries(out) == []
    for n in names:
        assert _outputs(out, n) == [f"{n}{s}" for s in sorted(E.SUFFIXES.values())], n
        complete, records = _read_marker(marker_path(out, n))
        assert complete and sorted(records) == _outputs(out, n), n
        np.testing.assert_array_equal(tifffile.imread(out / f"{n}_masks.tif"),
                                      tifffile.imread(ref / f"{n}_masks.tif"))
        assert (out / f"{n}_cells.csv").read_text() == (ref / f"{n}_cells.csv").read_text()
        np.testing.assert_array_equal(skimage.io.imread(out / f"{n}_outlines.png"),
                                      skimage.io.imread(ref / f"{n}_outlines.png"))
        got, want = (np.load(d / f"{n}_seg.npy", allow_pickle=True).item() for d in (out, ref))
        np.testing.assert_array_equal(got["masks"], want["masks"])
        rois = [[r.coordinates().tolist() for r in roifile.roiread(d / f"{n}_rois.zip")]
                for d in (out, ref)]
        assert rois[0] == rois[1] and len(rois[0]) == int(want["masks"].max()) > 0


# --- states of the output folder and faults: one row each ---------------------------------
def _done(work, reference):
    """--out as an uninterrupted run left it."""
    shutil.copytree(reference / "ref", work / "out")


def setup_killed_mid_set(work, reference, monkeypatch):
    """B1: a run killed while renaming im1's outputs: marker 'incomplete', 2 of 5 outputs,
    temporaries of the other 3; im2 was not started."""
    _done(work, reference)
    out = work / "out"
    marker = marker_path(out, "im1")
    text = marker.read_text()
    marker.write_text(text.replace('"complete": true', '"complete": false'))
    for suffix in ("_cells.csv", "_rois.zip", "_seg.npy"):
        target = out / f"im1{suffix}"
        target.rename(out / f".{target.stem}.ab12cd_3.part{target.suffix}")
    for p in [*out.glob("im2_*"), marker_path(out, "im2")]:
        p.unlink()


def check_killed_mid_set(work, reference, before):
    _assert_complete_and_correct(work / "out", reference / "ref")


def setup_users_own_outputs(work, reference, monkeypatch):
    """B1: a complete set of im0 that this command did not write (no marker)."""
    _done(work, reference)
    marker_path(work / "out", "im0").unlink()


def check_users_files_untouched(work, reference, before):
    assert _snapshot(work / "out") == before["out"]  # not one byte replaced, nothing added
    assert _temporaries(work) == []


def setup_output_changed_since(work, reference, monkeypatch):
    """B1: im0's _seg.npy corrected in the Cellpose GUI after our run, its ROIs deleted."""
    _done(work, reference)
    out = work / "out"
    (out / "im0_rois.zip").unlink()
    with open(out / "im0_seg.npy", "ab") as fh:
        fh.write(b"corrected")


def setup_stale_temporaries(work, reference, monkeypatch):
    """B2: an orphan temporary of ours, plus files that only look like one (kept)."""
    _done(work, reference)
    out = work / "out"
    (out / ".im2_seg.x7_k2mq9.part.npy").write_bytes(b"half")
    (out / ".notes.x7_k2mq9.part.txt").write_text("the user's")  # not one of our outputs
    (out / "im2_seg.x7_k2mq9.part.npy").write_text("the user's")  # not hidden
    (work / ".im2_seg.x7_k2mq9.part.npy").write_text("outside --out")


def check_only_our_temporary_removed(work, reference, before):
    after = _snapshot(work / "out")
    assert set(before["out"]) - set(after) == {".im2_seg.x7_k2mq9.part.npy"}
    assert set(after) == set(before["out"]) - {".im2_seg.x7_k2mq9.part.npy"}
    assert (work / ".im2_seg.x7_k2mq9.part.npy").exists()


def setup_disk_full(work, reference, monkeypatch):
    """B3: the disk fills while the 4th of im1's 5 outputs is written."""
    _done(work, reference)
    for p in [*work.joinpath("out").glob("im[12]_*"), marker_path(work / "out", "im1"),
              marker_path(work / "out", "im2")]:
        p.unlink()
    def full(path, rois, **kw):
        with open(path, "wb") as fh:
            fh.write(b"PK half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(roifile, "roiwrite", full)


def check_disk_full_then_resume(work, reference, before):
    out = work / "out"
    assert _temporaries(work) == []
    assert _outputs(out, "im1") == [] and _outputs(out, "im2") == []  # no partial set
    assert not marker_path(out, "im1").exists() and not marker_path(out, "im2").exists()
    assert {k: v for k, v in _snapshot(out).items() if k.startswith(("im0", ".im0"))} == \
        {k: v for k, v in before["out"].items() if k.startswith(("im0", ".im0"))}
    assert main(_argv(work)) == 0  # space freed: the re-run resumes
    _assert_complete_and_correct(out, reference / "ref")


def setup_output_like_inputs(work, reference, monkeypatch):
    """B5: a folder holding annotations and outputs next to the images."""
    for name in ("a_masks", "b_seg", "c_outlines", "d_flows", "e_cp_masks"):
        shutil.copy(work / "in" / "im0_img.tif", work / "in" / f"{name}.tif")


def check_nothing_of_them_segmented(work, reference, before):
    assert sorted({p.name.split("_")[0] for p in (work / "out").glob("*_masks.tif")}) == list(NAMES)
    _assert_complete_and_correct(work / "out", reference / "ref")


def _deny(monkeypatch, method, path):
    """Path.<method> raises PermissionError on ``path`` (as it would for a non-root user)."""
    real = getattr(Path, method)

    def denied(self, *args, **kwargs):
        if Path(self) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, method, denied)


def setup_unreadable_input_folder(work, reference, monkeypatch):
    """B7: an input folder without read permission."""
    if AS_ROOT:
        _deny(monkeypatch, "iterdir", work / "in")
    return {work / "in": 0o300}


def setup_out_under_read_only_parent(work, reference, monkeypatch):
    """B7: --out is to be created inside a read-only folder."""
    (work / "ro").mkdir()
    if AS_ROOT:
        _deny(monkeypatch, "mkdir", work / "ro" / "out")
    return {work / "ro": 0o555}


def setup_read_only_out(work, reference, monkeypatch):
    """B7: --out exists but takes no files."""
    (work / "out").mkdir()
    if AS_ROOT:
        real = tempfile.mkstemp

        def denied(*args, dir=None, **kwargs):
            if Path(dir) == work / "out":
                raise PermissionError(errno.EACCES, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", denied)
    return {work / "out": 0o555}


def check_nothing_written(work, reference, before):
    for folder in (work / "out", work / "ro"):
        assert not folder.exists() or list(folder.iterdir()) == []
    assert _snapshot(work / "in") == before["in"]


SEGMENT_ROWS = [  # (id, setup, extra argv, exit code, phrases ({out} = the --out folder), check)
    ("B1 set of a killed run is redone", setup_killed_mid_set, [], 0,
     ["removed 3 temporary files", "2 of 3 images segmented", "1 skipped (already done)"],
     check_killed_mid_set),
    ("B1 user's own outputs are refused", setup_users_own_outputs, [], 1,
     ["im0_img.tif: FAILED", "im0_masks.tif, im0_outlines.png", "not written by cellpose-nb",
      "--overwrite"], check_users_files_untouched),
    ("B1 outputs changed since are refused", setup_output_changed_since, [], 1,
     ["im0_seg.npy exists in {out}", "(or changed since)"], check_users_files_untouched),
    ("B2 only our stale temporaries go", setup_stale_temporaries, [], 0,
     ["removed 1 temporary file", "3 skipped (already done)"], check_only_our_temporary_removed),
    ("B3 disk full stops, no partial set", setup_disk_full, [], 1,
     ["cannot write im1_rois.zip in {out}", "No space left on device", "stopped at im1_img.tif",
      "re-run to resume"], check_disk_full_then_resume),
    ("B5 output-like inputs are named", setup_output_like_inputs, [], 0,
     ["skipped 5 files that look like outputs, annotations or hidden files",
      "a_masks.tif, b_seg.tif, c_outlines.tif, ..."], check_nothing_of_them_segmented),
    ("B7 unreadable input folder", setup_unreadable_input_folder, [], 2,
     ["cannot read the input {in}", "Permission denied"], check_nothing_written),
    ("B7 --out under a read-only folder", setup_out_under_read_only_parent,
     ["--out", "{ro}/out"], 2, ["cannot create the output folder {ro}/out", "Permission denied"],
     check_nothing_written),
    ("B7 read-only --out", setup_read_only_out, [], 1,
     ["cannot write im0_masks.tif in {out}", "Permission denied", "stopped at im0_img.tif"],
     check_nothing_written),
]


@pytest.mark.parametrize("case, setup, extra, code, phrases, check", SEGMENT_ROWS,
                         ids=[r[0] for r in SEGMENT_ROWS])
def test_segment_outputs_resume_refuse_or_fail_in_one_line(work, reference, monkeypatch, capsys,
                                                           case, setup, extra, code, phrases, check):
    modes = setup(work, reference, monkeypatch) or {}  # {folder: mode while segment runs}
    before = {f: _snapshot(work / f) for f in ("in", "out")}
    fill = {"out": work / "out", "in": work / "in", "ro": work / "ro"}
    try:
        for folder, mode in modes.items():
            os.chmod(folder, mode)
        rc = main([a.format(**fill) for a in _argv(work, *extra)])
        text = capsys.readouterr()
        err = text.out + text.err
    finally:
        for folder in modes:
            os.chmod(folder, 0o755)
    assert rc == code, err
    for phrase in phrases:
        assert phrase.format(**fill) in err, (phrase, err)
    assert "Traceback" not in err
    monkeypatch.undo()
    check(work, reference, before)


# --- export_all: all or nothing ------------------------------------------------------------
def _labels():
    lab = np.zeros((40, 40), np.int32)
    lab[5:15, 5:15], lab[20:30, 22:35] = 1, 2
    return lab


def _fail_writer(monkeypatch, module, attr, exc):
    """``module.attr`` writes half a file, then raises ``exc``."""
    def broken(path, *args, **kwargs):
        if hasattr(path, "write"):  # np.save(fh, ...)
            path.write(b"half")
        else:
            Path(path).write_bytes(b"half")
        raise exc

    monkeypatch.setattr(module, attr, broken)


def _fail_nth_rename(monkeypatch, n):
    """The n-th os.replace raises, after the earlier ones have renamed their files."""
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == n:
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


EXPORT_ROWS = [  # (id, labels, fault, error type, phrase)
    ("B29 empty labels", np.zeros((0, 40), np.int32), None, ValueError, "img_* are empty"),
    ("B29 huge sparse ids", np.array([[0, 2 ** 31 - 1]] * 2), None, ValueError, "renumber"),
    ("B29 ids beyond uint32", np.array([[0, 2 ** 40]] * 2), None, ValueError, "renumber"),
    ("B29 a later writer fails", _labels(),
     lambda mp: _fail_writer(mp, roifile, "roiwrite", ValueError("roifile: bad polygon")),
     ValueError, "bad polygon"),
    ("B3 disk full in the last writer", _labels(),
     lambda mp: _fail_writer(mp, np, "save", OSError(errno.ENOSPC, "No space left on device")),
     OSError, "cannot write img_seg.npy in {out}: No space left on device"),
    ("B29 a rename fails after two", _labels(), lambda mp: _fail_nth_rename(mp, 3),
     OSError, "cannot write img_cells.csv in {out}: Input/output error"),
    ("B1 interrupted while writing", _labels(),
     lambda mp: _fail_writer(mp, tifffile, "imwrite", KeyboardInterrupt()), KeyboardInterrupt, ""),
]


@pytest.mark.parametrize("case, labels, fault, kind, phrase", EXPORT_ROWS,
                         ids=[r[0] for r in EXPORT_ROWS])
def test_export_all_writes_everything_or_nothing(tmp_path, monkeypatch, case, labels, fault,
                                                 kind, phrase):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    if fault is not None:
        fault(monkeypatch)
    with pytest.raises(kind) as info:
        E.export_all(out, "img", None, labels)
    assert phrase.format(out=out) in str(info.value)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing half-written
    if labels.size and labels.max() < 100:  # the same call works once the fault is gone
        assert len(E.export_all(out, "img", None, labels)) == 5


def test_export_all_calls_before_rename_with_finished_temporaries(tmp_path):
    seen = {}

    def before_rename(staged):
        seen.update({t.name: (tmp.name, tmp.stat().st_size, t.exists()) for t, tmp in staged.items()})
        raise KeyboardInterrupt  # as if interrupted right before the renames

    with pytest.raises(KeyboardInterrupt):
        E.export_all(tmp_path, "img", None, _labels(), before_rename=before_rename)
    assert sorted(seen) == sorted(f"img{s}" for s in E.SUFFIXES.values())
    assert all(tmp.startswith(f".{Path(t).stem}.") and ".part" in tmp and size > 0 and not exists
               for t, (tmp, size, exists) in seen.items())
    assert list(tmp_path.iterdir()) == []
    assert [p.name for p in stale_temporaries(tmp_path, seen)] == []


# --- real interrupts -----------------------------------------------------------------------
SIGTERM_DRIVER = """
import sys, time
from pathlib import Path
import roifile
from cellpose_nb.cli import main

flag, real = Path(sys.argv[1]), roifile.roiwrite

def slow(path, rois, **kw):  # im1's ROI set is being written when the signal comes
    real(path, rois, **kw)
    if Path(path).name.startswith(".im1_rois."):
        flag.write_text(str(path))
        time.sleep(300)

roifile.roiwrite = slow
sys.exit(main(sys.argv[2:]))
"""

SIGKILL_DRIVER = """
import os, signal, sys
from cellpose_nb.cli import main

real, renamed = os.replace, []

def replace(src, dst):  # killed outright between im1's 2nd and 3rd rename
    if os.path.basename(str(dst)).startswith("im1_"):
        renamed.append(dst)
        if len(renamed) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)

os.replace = replace
sys.exit(main(sys.argv[2:]))
"""


def _start(work, driver, *args):
    script = work / "driver.py"
    script.write_text(textwrap.dedent(driver))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.Popen([sys.executable, str(script), str(work / "flag"), *_argv(work), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_B1_B2_sigterm_mid_write_leaves_no_partial_set_and_the_rerun_resumes(work, reference, capsys):
    proc = _start(work, SIGTERM_DRIVER)
    deadline = time.monotonic() + 240
    while not (work / "flag").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver never reached im1's ROI write"
        time.sleep(0.05)
    temporary = Path((work / "flag").read_text())
    assert temporary.exists()  # the signal comes in the middle of im1's set
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err
    out = work / "out"
    assert _temporaries(work) == []
    assert _outputs(out, "im1") == [] and not marker_path(out, "im1").exists()  # no partial set
    _assert_complete_and_correct(out, reference / "ref", names=("im0",))
    assert main(_argv(work)) == 0
    assert "2 of 3 images segmented" in capsys.readouterr().out
    _assert_complete_and_correct(out, reference / "ref")


def test_B1_B2_a_hard_kill_between_renames_is_redone_on_the_rerun(work, reference, capsys):
    proc = _start(work, SIGKILL_DRIVER)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err
    out = work / "out"
    # what a kill leaves: 2 of im1's outputs, temporaries of the other 3, an incomplete marker
    assert _outputs(out, "im1") == ["im1_masks.tif", "im1_outlines.png"]
    assert len(stale_temporaries(out, [f"im1{s}" for s in E.SUFFIXES.values()])) == 3
    complete, records = _read_marker(marker_path(out, "im1"))
    assert not complete and len(records) == 5
    assert main(_argv(work)) == 0  # the set is ours (marker), so it is redone, not refused
    captured = capsys.readouterr()
    assert "removed 3 temporary files of an interrupted run" in captured.err
    assert "2 of 3 images segmented into" in captured.out and "1 skipped" in captured.out
    _assert_complete_and_correct(out, reference / "ref")
