"""Runs scripts as `python SCRIPT.py ARGS` would, each in a fork of this warmed-up process.

Every chapter process first pays for starting Python: importing torch and scikit-learn,
and building its first optimizer (which imports torch._dynamo). Here that is paid once: this
process does it, then forks one child per script it is asked to run. A child is a real,
separate process with its own folder, arguments, stdout, stderr and exit status, and it runs
the script from its first line, as `__main__`: only the imports are already done.

Nothing from the project is imported here, so each script imports its own modules afresh.

The protocol, one JSON object a line. In: {"id", "script", "args", "cwd", "stdout",
"stderr"} (the last two are file paths). Out: {"ready": true} once warm, then
{"id", "pid"} when a child starts and {"id", "returncode"} when it ends (negative: the
signal that ended it).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import sys
import threading
from pathlib import Path

# What every chapter imports before its first step, and then some: the floor.
import matplotlib.pyplot  # noqa: F401 -- warm import (MPLBACKEND=Agg comes with the environment)
import numpy  # noqa: F401
import sklearn.datasets
import sklearn.model_selection  # noqa: F401
import torch

torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its first construction imports torch._dynamo


def exit_status(stop: SystemExit) -> int:
    """What the interpreter makes of SystemExit(code): None is 0, a number is itself, any
    other value is printed on stderr and is 1."""
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def run_as_main(request: dict) -> None:
    """In the child: become `python SCRIPT ARGS` in `cwd`, run it, and exit as Python does."""
    os.chdir(request["cwd"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 -- the child's own, for its whole life
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    script = str(Path(request["script"]).resolve())
    sys.argv = [script, *request["args"]]
    sys.path[0] = str(Path(script).parent)  # as `python SCRIPT` puts the script's folder first
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = exit_status(stop)
    except BaseException:  # what the interpreter does with an uncaught exception
        sys.excepthook(*sys.exc_info())
        code = 1
    # What the interpreter does on its way out: wait for threads, run atexit, flush.
    threading._shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:
            code = code or 120  # Python's status when flushing stdout at exit fails
    os._exit(code)


def send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    """Fork a child per request line on stdin; report each child's start and end. Ends, and
    kills what still runs, when stdin closes."""
    running: dict[int, int] = {}  # pid -> request id
    pending = b""
    send({"ready": True})
    while True:
        readable, _, _ = select.select([0], [], [], 0.02)
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                request = json.loads(line)
                sys.stdout.flush()
                pid = os.fork()
                if pid == 0:
                    run_as_main(request)
                running[pid] = request["id"]
                send({"id": request["id"], "pid": pid})
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            send({"id": running.pop(pid), "returncode": os.waitstatus_to_exitcode(status)})
    for pid in running:
        os.kill(pid, 9)
    sys.stdout.flush()
    os._exit(0)  # no clean-up at exit: tearing down torch and the rest took over a second


if __name__ == "__main__":
    serve()
