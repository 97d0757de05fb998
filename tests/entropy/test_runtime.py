"""entropy/runtime.py: the progress meter."""
from adaptive_lm.entropy.runtime import Meter


def test_a_short_job_prints_only_its_last_line(capsys):
    bar = Meter("job", 1000, True)            # stderr is not a tty under pytest: one line per 5 s, and the end
    for done in range(0, 101, 10):
        bar(done, 100)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "100.0%" in lines[0] and "100/100 tokens" in lines[0]


def test_a_disabled_meter_prints_nothing(capsys):
    bar = Meter("job", 1000, False)
    bar(0, 10), bar(10, 10)
    assert capsys.readouterr().err == ""
