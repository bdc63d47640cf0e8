"""scripts/heartbeat.sh: a line every few seconds while a quiet command runs (the installs).

`make demo` must print a line at least every 30 s; the installs run with --quiet for up to
minutes, so the Makefile runs each of them under the heartbeat.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
HEARTBEAT = REPO / "scripts" / "heartbeat.sh"


def heartbeat(*command: str, every: int = 1) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HEARTBEAT), "installing things", *command],
        env={"PATH": "/usr/bin:/bin", "HEARTBEAT_S": str(every)},
        capture_output=True,  # a leftover process holding the pipe would hang this call
        text=True,
        timeout=60,
    )


def test_a_line_while_the_command_runs_and_its_status_and_output_kept() -> None:
    done = heartbeat("sh", "-c", "echo working; sleep 3.5; echo oops >&2; exit 3")
    assert done.returncode == 3
    assert done.stderr == "oops\n"
    lines = done.stdout.splitlines()
    beats = [line for line in lines if line.startswith("  ... ")]
    # On a loaded machine the beats may come a little late: their number and times are bounds.
    assert [line for line in lines if line not in beats] == ["working"], lines
    assert 2 <= len(beats) <= 4, lines
    assert all(re.fullmatch(r"  \.\.\. installing things: still running, \d+s", b) for b in beats)
    seconds = [int(b.rsplit(" ", 1)[1][:-1]) for b in beats]
    assert seconds == sorted(seconds) and 1 <= seconds[0] <= 3, beats


def test_a_quick_command_prints_nothing_more() -> None:
    done = heartbeat("true", every=25)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert heartbeat("false", every=25).returncode == 1
    usage = subprocess.run([str(HEARTBEAT), "label only"], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("installer", ["uv", "pip"])
def test_make_install_runs_every_install_of_the_lock_under_the_heartbeat(
    installer: str, tmp_path: Path
) -> None:
    # `make -n` prints the recipe without running it (-B: as if nothing were installed).
    printed = subprocess.run(
        ["make", "-n", "-B", "install", f"INSTALLER={installer}", f"MLOPS_HOME={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    # Each command that installs the lock, joined with its continuation lines.
    commands = printed.replace("\\\n", " ").splitlines()
    installs = [c for c in commands if "-c requirements/lock.txt -e" in c]
    assert installs
    for command in installs:  # each simple command of the shell line that installs the lock
        for part in re.split(r"&&|\|\||;|[{}]", command):
            if "-c requirements/lock.txt -e" in part:
                assert part.split()[0] == "scripts/heartbeat.sh", part
    assert f"Installing the {lock_pins()} pinned dependencies of requirements/lock.txt" in printed
    assert ("with uv: about 45 s" if installer == "uv" else "with pip: 3 to 11 minutes") in printed


def lock_pins() -> int:
    lines = (REPO / "requirements" / "lock.txt").read_text().splitlines()
    return sum(1 for line in lines if "==" in line and not line.startswith("#"))
