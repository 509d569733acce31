import signal

pytest_plugins = ["pytester"]

# A suite started in the background by a non-interactive shell (scripts/test.sh runs the
# floors suite so) inherits SIGINT ignored, and so would every process it starts: the
# bulk command's Ctrl-C tests would send a Ctrl-C their worker ignores. A handler (not
# SIG_IGN) is reset to the default at exec, so the workers get Python's own.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
