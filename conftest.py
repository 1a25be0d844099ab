"""Suite-wide setup: the signal tests send Ctrl-C, so Ctrl-C must not be ignored."""

import signal


def pytest_configure(config):
    # A shell that starts pytest in the background (`pytest &`, nohup) sets SIGINT to "ignore",
    # and processes inherit that: the tests of Ctrl-C handling, in this process and in the worker
    # processes they start, would see no Ctrl-C at all. Restore Python's default.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
