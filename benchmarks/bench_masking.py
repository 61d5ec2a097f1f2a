"""What masking secrets costs a run: the launch (one more process, only with secrets) and the output's throughput."""

from __future__ import annotations

import os
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import interleaved_medians, report, run_cmd

from mltrain.hosts.wrapper import masked, wrapper_argv

MLTRAIN = str(Path(sys.executable).parent / "mltrain")
SECRET = "s3cr3t-token-value-0123456789"


def wrapped(folder: Path, job: list[str], secrets: list[str]) -> tuple[list[str], dict[str, str]]:
    argv, env = masked(job, sys.executable, secrets)
    return wrapper_argv(str(folder / "output.log"), str(folder / "exit_code"), argv), {**os.environ, **env}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        trivial = [sys.executable, "-S", "-c", "print('hello')"]
        plain_argv, plain_env = wrapped(folder, trivial, [])
        mask_argv, mask_env = wrapped(folder, trivial, [SECRET])
        times = interleaved_medians({
            "plain": run_cmd(plain_argv, env=plain_env),
            "masked": run_cmd(mask_argv, env=mask_env),
        }, repeat=31, warmup=3)
        report("wrapper + trivial job, no secrets (no filter)", times["plain"], None, "baseline")
        report("wrapper + trivial job, with a secret (filter)", times["masked"], times["plain"], "a few ms more")

        size = 64 << 20
        noisy = [sys.executable, "-S", "-c",
                 f"import sys\nline = b'step 1 loss 0.25 ' * 4 + b'\\n'\nn = {size} // len(line)\n"
                 "w = sys.stdout.buffer\nfor _ in range(n): w.write(line)\n"]
        plain_argv, plain_env = wrapped(folder, noisy, [])
        mask_argv, mask_env = wrapped(folder, noisy, [SECRET, "another-secret-value", "x" * 3000])
        times = interleaved_medians({
            "plain": run_cmd(plain_argv, env=plain_env),
            "masked": run_cmd(mask_argv, env=mask_env),
        }, repeat=3, warmup=1)
        report(f"{size >> 20} MiB of output, no filter", times["plain"], None, "baseline")
        report(f"{size >> 20} MiB of output through the filter (3 secrets)", times["masked"], times["plain"],
               "far above a job's output rate")
        print(f"{'filter throughput':<58} {size / times['masked'] / 2**20:8.1f} MiB/s")

        project = folder / "proj"
        project.mkdir()
        (project / "t.py").write_text(textwrap.dedent("import os\nprint(os.environ['TOK'])\n"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLTRAIN_")}
        env["MLTRAIN_HOME"] = str(folder / "ws")
        cmd = [MLTRAIN, "script=t.py", "+env_vars.TOK=${oc.env:TOK}"]
        times = interleaved_medians({  # both interpolate: only the filter differs (3 characters are not masked)
            "short": run_cmd(cmd, cwd=project, env={**env, "TOK": "abc"}),
            "secret": run_cmd(cmd, cwd=project, env={**env, "TOK": SECRET}),
        }, repeat=9, warmup=1)
        report("mltrain run end to end, value not masked (no filter)", times["short"], None, "baseline")
        report("mltrain run end to end, a secret masked", times["secret"], times["short"], "a few ms more")


if __name__ == "__main__":
    main()
