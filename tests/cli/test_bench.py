"""``lanerpc bench`` end to end, in a subprocess as a user runs it (``python -m rpc``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SUBJECTS = ("grpc-tcp", "lanerpc-shm")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LANERPC_LANES"}


def _bench(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rpc", "bench", *args], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=timeout)


def _busy_loops() -> set[int]:
    """Pids of processes running the bench's --busy spin loop."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"while True:\n    pass" in cmdline:
                found.add(int(entry))
    return found


def test_bench_writes_a_chart_and_the_rows_as_json(tmp_path: Path) -> None:
    chart, figures = tmp_path / "x.png", tmp_path / "y.json"
    before = _busy_loops()
    proc = _bench("--quick", "--only", ",".join(SUBJECTS), "--plot", str(chart),
                  "--json", str(figures), "--busy", "--progress")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _busy_loops() - before == set()       # the busy process was stopped

    data = chart.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 10_000                    # bars and labels, not an empty canvas
    rows = json.loads(figures.read_text())
    assert set(rows["subjects"]) == set(SUBJECTS)
    assert rows["machine"]["busy_process"] is True
    assert rows["command"].startswith("lanerpc bench --quick")
    assert rows["subjects"]["lanerpc-shm"]["lane"] == "shm"
    for name in SUBJECTS:
        assert rows["subjects"][name]["median"]["unary_p50_us"] > 0
    # The table on stdout, the progress (forced: stderr is a pipe) on stderr.
    assert "lanerpc-shm" in proc.stdout and "ratios" in proc.stdout
    assert "bench [" in proc.stderr and "lanerpc-shm: latency" in proc.stderr


def test_json_alone_goes_to_stdout_and_the_table_to_stderr() -> None:
    proc = _bench("--quick", "--only", "floor-tcp", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads(proc.stdout)
    assert rows["subjects"]["floor-tcp"]["median"]["calls_per_s"] > 0
    assert "floor-tcp" in proc.stderr
    assert "bench [" not in proc.stderr          # no progress bar: stderr is not a terminal


def test_plot_without_matplotlib_is_a_clear_error_before_the_run(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('no matplotlib here')\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(ROOT)])
    proc = subprocess.run([sys.executable, "-m", "rpc", "bench", "--quick", "--only", "grpc-tcp",
                           "--plot", str(tmp_path / "x.png")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--plot needs matplotlib" in proc.stderr and "lanerpc[plot]" in proc.stderr
    assert "grpc-tcp" not in proc.stdout         # nothing was measured
    assert not (tmp_path / "x.png").exists()


def test_unknown_subject_is_refused_with_the_known_ones() -> None:
    proc = _bench("--only", "nonsense")
    assert proc.returncode == 2
    assert "unknown subject(s) nonsense" in proc.stderr and "lanerpc-shm" in proc.stderr


def test_the_shipped_echo_modules_are_the_examples_ones() -> None:
    shipped, example = ROOT / "rpc" / "_bench", ROOT / "examples" / "echo"
    assert (shipped / "echo_pb2.py").read_text() == (example / "echo_pb2.py").read_text()
    assert (shipped / "echo_pb2_grpc.py").read_text() == (example / "echo_pb2_grpc.py").read_text() \
        .replace("from examples.echo import echo_pb2 as", "from rpc._bench import echo_pb2 as")


def test_the_bench_imports_nothing_of_tests_or_examples() -> None:
    for path in (ROOT / "rpc" / "_bench").glob("*.py"):
        text = path.read_text()
        assert "import tests" not in text and "from tests" not in text, path
        assert "from examples" not in text and "import examples" not in text, path


def test_the_bench_runs_from_an_install(tmp_path: Path) -> None:
    """A wheel of the package, unpacked away from the checkout: its entry point is there,
    and lanerpc bench runs from it (no tests/, no examples/ to lean on)."""
    import shutil
    import zipfile

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("rpc", "transports"):
        shutil.copytree(ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(source)],
                   check=True, timeout=120, capture_output=True,
                   env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    (wheel,) = tmp_path.glob("lanerpc-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "lanerpc = rpc._cli:main" in archive.read(entry_points).decode()
        assert {"rpc/_bench/echo_pb2.py", "rpc/_bench/_run.py", "rpc/_cli/bench.py"} <= set(names)
        archive.extractall(installed)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**_env(), "PYTHONPATH": str(installed)}
    proc = subprocess.run([sys.executable, "-m", "rpc", "bench", "--quick", "--only", "lanerpc-shm",
                           "--json"], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)["subjects"]["lanerpc-shm"]
    assert row["unavailable"] is None and row["lane"] == "shm", row
