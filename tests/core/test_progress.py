"""Progress bars draw on a terminal only, and never under CI."""
import io

from onestep.progress import bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_draw_on_a_terminal_and_stay_silent_in_ci_and_pipes(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.delenv("CI", raising=False)
    with bar(3, "work") as b:
        b.update(3)
    assert "work:" in terminal.getvalue() and "0/3" in terminal.getvalue()
    monkeypatch.setenv("CI", "true")
    with bar(3, "in ci") as b:
        b.update(3)
    assert "in ci" not in terminal.getvalue()
    pipe = io.StringIO()
    monkeypatch.setattr("sys.stderr", pipe)
    monkeypatch.delenv("CI")
    with bar(3, "piped") as b:
        b.update(3)
    assert pipe.getvalue() == ""
