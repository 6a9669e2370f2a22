"""The board's launcher: runs wait at the start line, and the board says who it is waiting for."""
import subprocess
import sys

from onestep.compare import launch as launch_module
from onestep.compare.gate import StartGate

# a stand-in for `onestep run --start-gate`: prepare for DELAY seconds, arrive at the line, wait for go
RUN = """
import sys, time
from onestep.compare.gate import StartGate
time.sleep(float(sys.argv[2]))
StartGate(sys.argv[1]).arrive()
"""


def test_before_the_start_the_board_names_the_runs_still_preparing(tmp_path, monkeypatch):
    gate = StartGate(tmp_path / "start")
    delays = {"fast": "0", "slow": "4"}

    def fake_launch(argv, out):
        return {m: (subprocess.Popen([sys.executable, "-c", RUN, str(gate.folder), delays[m]]),
                    open(out / f"{m}.log", "w")) for m in argv}

    monkeypatch.setattr(launch_module, "launch", fake_launch)
    lines = []
    codes = launch_module.train_together({"fast": [], "slow": []}, tmp_path, gate=gate, log=lines.append,
                                         status_every=1.0)
    assert codes == {"fast": 0, "slow": 0}
    waiting = [line for line in lines if "still preparing" in line]
    assert waiting and all("slow" in line for line in waiting), lines
    assert waiting[-1].endswith("still preparing: slow"), lines  # the fast run was at the line by then
    assert "training clocks start" in lines[len(waiting)], lines  # the start comes after every waiting line
