"""What the tests of bench/py's scripts share: the script loaded as a module (its folder on the
path, for the modules it imports), and checks that print ok/FAIL lines and set the exit code."""
import importlib.util
import os
import sys


def load(path, name):
    """The script at `path` as module `name`."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Checks:
    """check(ok, what) prints a line per check; exit() ends the test, 1 where any failed."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        print(("ok   " if ok else "FAIL ") + what)
        if not ok:
            self.failures.append(what)

    def exit(self):
        sys.exit(1 if self.failures else 0)
