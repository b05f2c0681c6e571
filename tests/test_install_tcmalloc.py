"""scripts/install_tcmalloc.sh, which `make install` runs: tcmalloc with apt-get as root, unpacked into the virtual
environment without root, a clear line where neither works, and never a failed install. apt-get, dpkg-deb, id
and ldconfig are stand-ins here, so nothing is installed on the machine."""

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "install_tcmalloc.sh"
LIBRARY = "libtcmalloc_minimal.so.4"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the script is a bash script")


def stand_ins(folder: Path, **scripts: str) -> Path:
    """A folder of executables named after the keys, each running its bash body; plus the tools the script uses."""
    folder.mkdir()
    for tool in ("grep", "mktemp", "find", "head", "mkdir", "cp", "mv", "rm", "dirname"):
        (folder / tool).symlink_to(shutil.which(tool))
    for name, body in scripts.items():
        (folder / name).write_text(f"#!/bin/bash\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def install(tmp_path: Path, tools: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    result = subprocess.run(
        [bash, str(SCRIPT), str(tmp_path / "venv" / "lib")], capture_output=True, text=True, env={"PATH": str(tools)}
    )
    assert result.returncode == 0, result.stderr  # tcmalloc changes speed and memory only: never fail the install
    return result


NOT_INSTALLED = "exit 0"  # ldconfig -p lists nothing


def test_without_root_the_package_is_unpacked_into_the_virtual_environment(tmp_path):
    tools = stand_ins(
        tmp_path / "bin",
        id="echo 1000",
        ldconfig=NOT_INSTALLED,
        **{
            "apt-get": '[ "$1" = download ] && echo deb > "$3.deb"',
            "dpkg-deb": f'mkdir -p "$3/usr/lib/x86_64-linux-gnu" && echo library > "$3/usr/lib/x86_64-linux-gnu/{LIBRARY}"',
        },
    )
    result = install(tmp_path, tools)
    assert (
        result.stdout.strip()
        == f"tcmalloc: unpacked libtcmalloc-minimal4 into {tmp_path / 'venv' / 'lib'} (apt-get download, no root needed)"
    )
    assert (tmp_path / "venv" / "lib" / LIBRARY).read_text() == "library\n"
    assert install(tmp_path, tools).stdout.strip() == "tcmalloc: installed"  # a second run finds it


def test_root_installs_with_apt_get_and_a_failure_only_says_so(tmp_path):
    works = stand_ins(tmp_path / "works", id="echo 0", ldconfig=NOT_INSTALLED, **{"apt-get": "exit 0"})
    assert install(tmp_path, works).stdout.strip() == "tcmalloc: installed libtcmalloc-minimal4 with apt-get"
    fails = stand_ins(tmp_path / "fails", id="echo 0", ldconfig=NOT_INSTALLED, **{"apt-get": "exit 100"})
    assert install(tmp_path, fails).stdout.strip() == (
        "tcmalloc: apt-get could not install libtcmalloc-minimal4: training runs on glibc's malloc (docs/speed.md)"
    )
    assert not (tmp_path / "venv").exists()


def test_without_apt_get_it_says_so_and_goes_on(tmp_path):
    tools = stand_ins(tmp_path / "bin", id="echo 1000", ldconfig=NOT_INSTALLED)
    assert install(tmp_path, tools).stdout.strip() == (
        "skipping the tcmalloc install (no apt-get here): training runs on glibc's malloc (docs/speed.md)"
    )
