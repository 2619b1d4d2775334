"""Run model-written Python in a subprocess with a time and a memory limit (a tool for code environments).

The child is a fresh `python -I` (isolated: no user site, no PYTHON* variables) in a temporary working
directory, with its address space capped by `RLIMIT_AS` (POSIX) and killed after `timeout_s`. It is a
guard against runaway code, not a security boundary: the child can still read files and open sockets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass

_MAX_OUTPUT = 10_000  # characters of stdout / stderr kept


@dataclass
class SandboxResult:
    """What the code did: its output, and why it ended when it did not end normally."""

    stdout: str
    stderr: str
    returncode: int | None
    """The exit status (None when it was killed for the time limit)."""
    timed_out: bool = False
    out_of_memory: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def as_text(self) -> str:
        """What to show the model."""
        if self.timed_out:
            return "Error: the code ran past its time limit and was stopped."
        if self.out_of_memory:
            return "Error: the code ran out of its memory limit (MemoryError)."
        if self.returncode != 0:
            return f"Error (exit {self.returncode}):\n{self.stderr.strip()}"
        return self.stdout


# Run in the child before the user's code: cap the address space, then run the script as __main__. (Not a
# preexec_fn: that is unsafe when the parent has threads, as a Ray driver does.)
_PRELUDE = """import resource, runpy, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _clean_traceback(stderr: str, cwd: str) -> str:
    """The traceback as the model should read it: the prelude's and runpy's frames dropped, the temporary
    folder's path written as the script's own name."""
    lines, skip = [], False
    for line in stderr.splitlines(keepends=True):
        if line.startswith('  File "'):
            skip = 'File "<string>"' in line or "runpy" in line
        elif not line.startswith("    "):
            skip = False
        if not skip:
            lines.append(line.replace(cwd + "/", ""))
    return "".join(lines)


def run_python(code: str, *, timeout_s: float = 5.0, memory_mb: int = 512) -> SandboxResult:
    """Run `code` as a script; stdout and stderr are captured (cut to 10,000 characters each)."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"run_python: timeout_s ({timeout_s}) and memory_mb ({memory_mb}) must be > 0")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="rlkit-sandbox-") as cwd:
        script = os.path.join(cwd, "main.py")
        with open(script, "w", encoding="utf-8") as f:
            f.write(code)
        try:
            done = subprocess.run([sys.executable, "-I", "-c", _PRELUDE, str(memory_mb * 2**20), script], cwd=cwd,
                                  env=env, capture_output=True, text=True, timeout=timeout_s,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as err:
            out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
            return SandboxResult(out[:_MAX_OUTPUT], "", None, timed_out=True)
    stderr = _clean_traceback(done.stderr, cwd)[-_MAX_OUTPUT:]
    return SandboxResult(done.stdout[:_MAX_OUTPUT], stderr, done.returncode,
                         out_of_memory="MemoryError" in stderr)


def python_tool(*, timeout_s: float = 5.0, memory_mb: int = 512):
    """A tool for an environment's `tools` list: the model sends code, it runs in the sandbox with these
    limits, and the model reads what it printed (or why it failed: the error, the time or memory limit)."""
    if timeout_s <= 0 or memory_mb <= 0:
        raise ValueError(f"python_tool: timeout_s ({timeout_s}) and memory_mb ({memory_mb}) must be > 0")

    def run_python_code(code: str) -> str:
        """Run a Python script and return what it prints."""
        from rlkit.envs.tools import ToolCallError

        result = run_python(code, timeout_s=timeout_s, memory_mb=memory_mb)
        if not result.ok:  # the model is told why, and the call counts as a failed one (env/tool_errors)
            raise ToolCallError(result.as_text().removeprefix("Error: ").removeprefix("Error ").rstrip("."))
        return result.stdout

    return run_python_code


__all__ = ["SandboxResult", "run_python", "python_tool"]
