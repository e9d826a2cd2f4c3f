"""Runs forked from one server that imported torch once (polyvis.nano.fork_server): the
launcher's environment and threads at each launch, a failing stage's status and log, and no run
left alive when the launcher is killed. That forked runs train and score to the same bytes as
runs in processes of their own is checked by benchmarks/bench_run_launch.py's smoke test
(tests/test_bench_smoke.py)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

from _orphans import survivors_of_kill9
from polyvis.nano.fork_server import RunServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


STAGE = textwrap.dedent(
    """
    import json, os, sys
    import torch

    class Report:
        def __init__(self, out):
            self.out = out

        def run(self):
            seen = {"x": os.environ.get("POLYVIS_TEST_X"), "threads": torch.get_num_threads(),
                    "omp": os.environ.get("OMP_NUM_THREADS")}
            with open(self.out, "w") as f:
                json.dump(seen, f)
            print("reported")
    """
)


PLOT_STAGE = textwrap.dedent(
    """
    import json, sys

    class Plot:
        def __init__(self, out):
            self.out = out

        def run(self):
            from polyvis.eval.report import plot_results

            before = set(sys.modules)
            results = {"scores": {"scene": 0.5, "ocr": 0.25}, "overall": 0.375, "model": "m"}
            plot_results(results, self.out)
            with open(self.out.with_suffix(".json"), "w") as f:
                json.dump(sorted(set(sys.modules) - before), f)
    """
)


def test_each_forked_run_takes_the_launchers_environment_and_threads_of_its_launch(
    tmp_path: Path, monkeypatch
):
    """Also: a run draws its results.png importing nothing its server had not (matplotlib is
    preloaded), and a server starts no process until its first launch."""
    (tmp_path / "report_stage.py").write_text(STAGE)
    (tmp_path / "plot_stage.py").write_text(PLOT_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    from plot_stage import Plot
    from report_stage import Report

    unused = RunServer(dict(os.environ))
    assert unused._proc is None  # made for calls that may launch nothing, it costs nothing
    unused.close()

    server = RunServer(dict(os.environ))
    try:
        png = tmp_path / "results.png"
        assert server.launch([Plot(png)], tmp_path / "plot.log", dict(os.environ), 1).wait() == 0
        assert png.stat().st_size > 1000
        assert json.loads(png.with_suffix(".json").read_text()) == []  # no module imported
        seen = []
        for x, threads in (("a", 1), ("b", 2)):
            env = {**os.environ, "POLYVIS_TEST_X": x, "OMP_NUM_THREADS": str(threads)}
            out, log = tmp_path / f"{x}.json", tmp_path / f"{x}.log"
            assert server.launch([Report(out)], log, env, threads).wait() == 0
            seen.append(json.loads(out.read_text()))
            assert log.read_text() == "reported\n"
        assert seen == [
            {"x": "a", "threads": 1, "omp": "1"},
            {"x": "b", "threads": 2, "omp": "2"},
        ]
        # a stage that fails: its exit status, its traceback in its own log
        failed = server.launch([Report(tmp_path / "no" / "such.json")], tmp_path / "f.log", env, 1)
        assert failed.wait() == 1
        assert "FileNotFoundError" in (tmp_path / "f.log").read_text()
    finally:
        server.close()


def test_a_server_stuck_before_its_first_fork_is_an_error_not_a_hang(tmp_path: Path, monkeypatch):
    """A server that never gets through its imports (here: a sitecustomize that sleeps) fails
    the launch after start_timeout, naming the wait, and is killed."""
    from polyvis.errors import PolyVisError

    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    monkeypatch.setattr(RunServer, "start_timeout", 2.0)
    server = RunServer(env)
    try:
        with pytest.raises(PolyVisError, match=r"^the run server forked no run within 2 s and was "
                           r"stopped \(no error output; exit status -9\)$"):  # fmt: skip
            server.launch([], tmp_path / "train.log", env, 1)
        assert server._proc.poll() == -9
    finally:
        server.close()


# A launcher that forks a run the way train_runs does, then waits. The stage unpickles as a
# call to time.sleep: a run that stays up.
PARENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from polyvis.nano.fork_server import RunServer

    class Sleep:
        def __reduce__(self):
            return (time.sleep, (60,))

    server = RunServer(dict(os.environ))
    run = server.launch([Sleep()], Path(sys.argv[1]) / "train.log", dict(os.environ), 1)
    print(server._proc.pid, run.pid, flush=True)
    time.sleep(60)
    """
)


def test_a_forked_run_and_its_server_die_with_the_launcher(tmp_path: Path):
    assert survivors_of_kill9(PARENT, str(tmp_path)) == [], "the server or its run outlived it"
