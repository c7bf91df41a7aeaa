"""SIGTERM (scancel, job time limits) ends a command as Ctrl-C does: no partial file, exit 143."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _wait_for_part(folder: Path, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if list(folder.glob(".*.part")):
            return True
        time.sleep(0.05)
    return False


def test_sigterm_during_convert_leaves_nothing(data_dir, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "ecgtool", "convert", str(data_dir / "cinc2017"),
                             "-o", str(tmp_path / "int6.parquet")], stderr=subprocess.PIPE)
    assert _wait_for_part(tmp_path, proc), "convert finished before it could be interrupted"
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "terminated" in err.decode()
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_embed_leaves_nothing(data_dir, tmp_path):
    src = data_dir / "ptbxl-500" / "records500" / "00000"
    rec = tmp_path / "rec.arrows"  # an Arrow stream: read as it comes (an Arrow file needs its end first)
    heas = sorted(src.glob("*_hr.hea"))[:8]
    assert subprocess.run([sys.executable, "-m", "ecgtool", "-q", "convert", *map(str, heas), "-o", str(rec)],
                          capture_output=True).returncode == 0
    out = tmp_path / "out"
    out.mkdir()
    # the input never ends: the command is still running (output file open) when the signal comes
    feeder = subprocess.Popen(["bash", "-c", f"cat {rec}; sleep 60"], stdout=subprocess.PIPE)
    proc = subprocess.Popen([sys.executable, "-m", "ecgtool", "embed", "-", "-o", str(out / "e.parquet")],
                            stdin=feeder.stdout, stderr=subprocess.PIPE)
    feeder.stdout.close()
    try:
        assert _wait_for_part(out, proc), "embed ended before it could be interrupted"
        time.sleep(0.5)
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    finally:
        feeder.kill()
    assert proc.returncode == 143, err.decode()
    assert list(out.iterdir()) == []
