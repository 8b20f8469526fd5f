"""Progress bars: carriage-return frames on a terminal, a few plain lines anywhere else."""

import io

from app.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_non_terminal_gets_a_few_plain_lines():
    out = io.StringIO()
    with progress_bar(total=10_000, unit="ev", desc="publishing", stream=out) as bar:
        for _ in range(10_000):
            bar.update()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3, lines  # start and end; more only every 10 s
    assert lines[-1].startswith("publishing: 100%") and "10000/10000" in lines[-1]


def test_a_terminal_gets_the_usual_frames():
    out = Terminal()
    with progress_bar(total=3, stream=out, mininterval=0) as bar:
        for _ in range(3):
            bar.update()
    assert "\r" in out.getvalue()
