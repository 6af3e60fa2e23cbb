"""What both suites need from the process that runs them.

A suite started from a shell without job control (`make test &` in a script, some CI runners)
inherits SIGINT ignored, and every command it starts ignores it too: the tests that end commands
with Ctrl-C or SIGINT (tests/unit/test_foreground.py, tests/e2e/test_exec.py) then time out though
the product works. Python's own handler, as an interactive start has it, is put back: a caught
signal is reset to its default in every child that execs."""
import signal


def pytest_configure(config):
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
