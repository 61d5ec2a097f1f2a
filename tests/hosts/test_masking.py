"""Secrets a job prints are masked where its log is written: the filter itself (chunk boundaries, base64,
exit codes, signals), which values count as secrets, and local runs through the real CLI."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Project, assert_one_line_error
from maskcheck import JOB, SECRET, SECRET_ARGS, SECRET_ENV, TRAP, assert_masked

from mltrain.hosts.masking import ENV, REPLACEMENT, Masker, encode_values, mask_text, patterns
from mltrain.hosts.wrapper import masked, masker_source


def stream(masker: Masker, pieces: list[bytes]) -> bytes:
    return b"".join(masker.feed(p) for p in pieces) + masker.flush()


def splits(data: bytes, rng: random.Random, n: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(n, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


# ---------------------------------------------------------------- the filter
def test_value_lines_of_a_multiline_value_and_short_values() -> None:
    masker = Masker([b"first-line\nxy\nthird-line", b"abc", b"abcd"])
    assert masker.mask(b"[first-line\nxy\nthird-line]") == b"[***]"  # the whole value first
    assert masker.mask(b"<third-line> <first-line> <xy>") == b"<***> <***> <xy>"  # a line of 2: too short alone
    assert masker.mask(b"abc abcd abcde") == b"abc *** ***e"  # 3 characters: never masked
    assert patterns([b"abc", b"\xc3\xa9\xc3\xa9\xc3\xa9"]) == []  # "ééé": 3 characters in 6 bytes
    from_file = Masker([b"file-token\n"])  # read from a file: its newline is not part of what gets printed
    assert from_file.mask(b"t=file-token; b=" + base64.b64encode(b"file-token")) == b"t=***; b=***"


def test_any_cut_of_the_stream_gives_the_whole_texts_result() -> None:
    """Fed in arbitrary pieces, the output equals masking the whole text at once, and no value survives."""
    values = [SECRET.encode(), b"multi-line one\nmulti-line two", b"abcd", b"dXYZ", b"aaaa"]
    masker = Masker(values)
    text = (b"start " + SECRET.encode() + b" mid abcdXYZ aaaaaaa multi-line one\nmulti-line two dXY dXYZ"
            + b" multi-line two " + SECRET.encode()[:-1] + b" end " + base64.b64encode(SECRET.encode()))
    whole = masker.mask(text)
    for value in (SECRET.encode(), b"multi-line one", b"multi-line two", b"abcd", b"dXYZ", b"aaaa"):
        assert value not in whole, value
    assert SECRET.encode()[:-1] in whole  # almost the value is not the value
    for cut in range(1, len(text)):  # every single cut
        assert stream(Masker(values), [text[:cut], text[cut:]]) == whole, cut
    rng = random.Random(1)
    for _ in range(300):  # and many cuts at once, down to single bytes
        assert stream(Masker(values), splits(text, rng, rng.randint(2, 40))) == whole
    assert stream(Masker(values), [bytes([b]) for b in text]) == whole


def _reference(text: bytes, found: list[bytes]) -> bytes:
    """Leftmost-longest replacement, the slow obvious way."""
    out, i = [], 0
    while i < len(text):
        match = next((p for p in found if text.startswith(p, i)), None)  # longest first
        out.append(REPLACEMENT if match else text[i:i + 1])
        i += len(match) if match else 1
    return b"".join(out)


def test_streams_agree_with_a_naive_reference_on_overlapping_values() -> None:
    """Values from a two-letter alphabet overlap and nest all the time: the hard cases for the held tail."""
    rng = random.Random(7)
    for _ in range(400):
        values = [bytes(rng.choice(b"ab\n") for _ in range(rng.randint(4, 9))) for _ in range(rng.randint(1, 3))]
        text = bytes(rng.choice(b"ab\nc") for _ in range(rng.randint(0, 80)))
        expected = _reference(text, patterns(values))
        assert Masker(values).mask(text) == expected, (values, text)
        if len(text) > 1:
            assert stream(Masker(values), splits(text, rng, rng.randint(1, 12))) == expected, (values, text)


def test_only_a_possible_secret_start_is_held_back() -> None:
    """Output passes at once (a streaming user sees it live), except a tail that may begin a secret."""
    masker = Masker([b"hunter22"])
    assert masker.feed(b"loss 0.5\n") == b"loss 0.5\n"
    assert masker.feed(b"step 1 hunt") == b"step 1 "
    assert masker.feed(b"er") == b""
    assert masker.feed(b"22 and hun") == b"*** and "
    assert masker.feed(b"gry\n") == b"hungry\n"
    assert masker.feed(b"x" * 100_000 + b"hunter2") == b"x" * 100_000  # bounded: at most a pattern's length
    assert len(masker._held) < masker.longest
    assert masker.flush() == b"hunter2"


def _b64(data: bytes, urlsafe: bool) -> bytes:
    return base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)


@pytest.mark.parametrize("urlsafe", [False, True])
def test_base64_of_the_value_inside_longer_base64_at_every_alignment(urlsafe: bool) -> None:
    """A value inside a longer base64 text starts at byte offset 0, 1 or 2 modulo 3: each alignment is masked,
    and every character whose bits come from the value alone is gone."""
    secret = b"~~~>>>???-" + SECRET.encode()  # its base64 holds + and /, which urlsafe spells - and _
    assert b"+" in base64.b64encode(secret) and b"/" in base64.b64encode(secret)
    masker = Masker([secret])
    for before in range(7):
        for after in range(4):
            prefix, suffix = os.urandom(before), os.urandom(after)
            encoded = _b64(prefix + secret + suffix, urlsafe)
            out = masker.mask(encoded)
            assert out.count(REPLACEMENT) == 1, (before, after, out)
            left, right = out.split(REPLACEMENT)
            first = -(-8 * before // 6)  # the first character made of the value's bits alone
            last = (8 * (before + len(secret))) // 6  # past the last such character
            assert len(left) <= first and len(encoded) - len(right) >= last, (before, after, out)
            assert stream(Masker([secret]), [encoded[:9], encoded[9:]]) == out
    assert masker.mask(b"token " + _b64(secret, urlsafe) + b"\n") == b"token ***\n"  # the padded form, whole


def test_mask_text_for_what_mltrain_writes_itself() -> None:
    assert mask_text(f"[mltrain] $ spark-submit job.py --key {SECRET}\n", [SECRET, "ab"]) == \
        "[mltrain] $ spark-submit job.py --key ***\n"
    assert mask_text("nothing here", []) == "nothing here"


# ----------------------------------------------------- the filter as a program
def _filter(argv: list[str], values: list[str], mode: str = "wrap", env: dict[str, str] | None = None,
            **kwargs: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, **(env or {}), ENV: encode_values(values)}
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", masker_source(), mode, *argv], env=env,  # type: ignore[call-overload]
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kwargs)


def test_filter_keeps_exit_codes_signals_and_the_jobs_environment() -> None:
    job = ("import os, sys; print('tok', os.environ['TOK'], flush=True); "
           "print('mask var', os.environ.get('MLTRAIN_MASK'), flush=True); sys.exit(3)")
    proc = _filter([sys.executable, "-S", "-c", job], [SECRET], env={"TOK": SECRET})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert out.decode().splitlines() == ["tok ***", "mask var None"]
    status = ["sh", "-c", "grep SigIgn /proc/self/status; kill -9 $$"]
    direct = subprocess.run(status, capture_output=True, stdin=subprocess.DEVNULL).stdout
    sh = _filter(status, [SECRET])
    assert sh.communicate(timeout=60)[0] == direct  # the job ignores no signal it would not ignore without us
    assert sh.returncode == 137  # killed by SIGKILL, as sh reports it
    missing = _filter(["/nonexistent/prog"], [SECRET])
    assert b"cannot run /nonexistent/prog" in missing.communicate(timeout=60)[0]
    assert missing.returncode == 127


def test_wrap_mode_outlives_the_job_and_forward_mode_passes_term_on() -> None:
    """Under the sh wrapper the process group's TERM reaches the job itself, so the filter only drains; as a
    container's only child (forward) it must pass the TERM on."""
    env = {"TOK": SECRET}
    with _filter([sys.executable, "-c", TRAP], [SECRET], env=env, start_new_session=True) as wrap:
        assert wrap.stdout is not None and wrap.stdout.readline() == b"ready\n"
        os.killpg(wrap.pid, signal.SIGTERM)
        assert wrap.stdout.read() == b"got TERM ***\n"
    assert wrap.returncode == 143
    with _filter([sys.executable, "-c", TRAP], [SECRET], mode="forward", env=env) as forward:
        assert forward.stdout is not None and forward.stdout.readline() == b"ready\n"
        forward.send_signal(signal.SIGTERM)  # the filter only, as init would
        assert forward.stdout.read() == b"got TERM ***\n"
    assert forward.returncode == 143


def test_output_streams_before_the_job_ends(tmp_path: Path) -> None:
    go = tmp_path / "go"
    job = f"import os, time\nprint('first', flush=True)\nwhile not os.path.exists({str(go)!r}): time.sleep(0.02)\n"
    with _filter([sys.executable, "-c", job], [SECRET]) as proc:
        assert proc.stdout is not None and proc.stdout.readline() == b"first\n"  # while the job still waits
        go.touch()
    assert proc.returncode == 0


def test_a_process_left_holding_the_output_does_not_keep_the_filter() -> None:
    proc = _filter(["sh", "-c", "sleep 120 & echo left $!; echo done"], [SECRET])
    out, _ = proc.communicate(timeout=60)  # without the job-exit check: 120 s, then a timeout here
    left = int(out.split()[1])
    try:
        assert out.split()[2] == b"done" and proc.returncode == 0
    finally:
        os.kill(left, signal.SIGKILL)


def test_masked_argv_starts_no_filter_without_a_value_to_mask() -> None:
    assert masked(["python", "t.py"], "/py", ["abc", ""]) == (["python", "t.py"], {})
    argv, env = masked(["python", "t.py"], "/py", ["abc", SECRET], forward_signals=True)
    assert argv[:4] == ["/py", "-I", "-S", "-c"] and argv[5:] == ["forward", "python", "t.py"]
    assert SECRET not in " ".join(argv) and set(env) == {ENV}


# ---------------------------------------------------------- which values count
def test_secrets_of_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mltrain.config.compose import compose_validated
    from mltrain.config.spec import RunSpec, _credential_settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLTRAIN_COMPOSE_CACHE", "0")
    monkeypatch.setenv("API_TOKEN", "tok-from-env")
    monkeypatch.setenv("UNUSED", "never-mentioned")
    monkeypatch.setenv("INHERITED", "inherited-secret")
    overrides = ["script=t.py", "+env_vars.TOKEN=${oc.env:API_TOKEN}", "+params.key=x-${oc.env:API_TOKEN}",
                 "+env_vars.LITERAL=literal-secret", "+env_vars.PLAIN=not-secret",
                 "secret_env=[LITERAL,INHERITED,NOT_SET]"]
    cfg, text = compose_validated(overrides)
    spec = RunSpec.from_config(cfg, text, overrides)
    assert "tok-from-env" not in text  # the stored config keeps the reference
    assert spec.secrets() == ("inherited-secret", "literal-secret", "tok-from-env")

    from dataclasses import dataclass, field

    @dataclass
    class Settings:
        password: str = "pw-value"
        key_passphrase: str | None = None
        tokenizer: str = "bert-base"  # a word that merely starts like one
        ssh: dict[str, object] = field(default_factory=lambda: {"api_key": "k-value", "nested": {"SECRET": "s"}})
        conf: dict[str, object] = field(default_factory=lambda: {
            "spark.hadoop.fs.s3a.secret.key": "flat", "fs": {"s3a": {"secret": {"key": "nested"}, "endpoint": "e"}}})

    assert sorted(_credential_settings(Settings())) == ["flat", "k-value", "nested", "pw-value", "s"]


def test_secret_env_names_are_checked(project: Project) -> None:
    assert_one_line_error(project.run("script=train.py", "secret_env=[A-B]"), "secret_env", "A-B")


# ------------------------------------------------------------- local, the CLI
def _everything_stored(workspace: Path) -> str:
    return "".join(p.read_bytes().decode(errors="replace") for p in workspace.rglob("*") if p.is_file())


def test_local_run_masks_secrets_in_stream_log_and_history(project: Project) -> None:
    project.write("job.py", JOB)
    result = project.run(*SECRET_ARGS, env=SECRET_ENV)
    assert result.returncode == 1
    assert_masked(result.stdout + result.stderr)
    (record,) = project.runs()
    assert record["status"] == "Failed" and record["exit_code"] == 1
    run_dir = project.workspace / "runs" / str(record["id"])
    assert_masked((run_dir / "output.log").read_text())
    shown = project.run("runs", "show", str(record["id"]), "--json", check=True).stdout
    assert SECRET not in shown and json.loads(shown)["metrics"] == {"loss": 0.25}
    assert_masked(project.run("runs", "logs", str(record["id"])).stdout)
    stored = _everything_stored(project.workspace)  # runs.db, config, plan, log: the value is nowhere
    assert SECRET not in stored and "line-two-of-key" not in stored
    assert "${oc.env:MY_TOKEN}" in (run_dir / "config.yaml").read_text()


def test_detached_run_then_attach_shows_it_masked(project: Project) -> None:
    project.write("job.py", JOB)
    run_id = project.run("--detach", *SECRET_ARGS, env=SECRET_ENV, check=True).stdout.strip()
    attached = project.run("runs", "attach", run_id)  # a process that never had the values
    assert attached.returncode == 1
    assert_masked(attached.stdout + attached.stderr)
    assert_masked((project.workspace / "runs" / run_id / "output.log").read_text())
    assert SECRET not in _everything_stored(project.workspace)


PARENT = textwrap.dedent(
    """
    import os
    cmdline = open(f"/proc/{os.getppid()}/cmdline", "rb").read().split(b"\\0")
    mode = "wrap" if b"wrap" in cmdline[:6] else "-"  # the masker's MODE follows `python -I -S -c SOURCE`
    print("parent", cmdline[0].decode(), cmdline[1].decode(), mode)
    print("mask var", os.environ.get("MLTRAIN_MASK"))
    """
)


def test_a_run_without_secrets_starts_no_filter(project: Project) -> None:
    """The job's parent is the sh wrapper itself, unless the run has a value to mask."""
    project.write("parent.py", PARENT)
    plain = project.run("script=parent.py", "+env_vars.SHORT=${oc.env:MY_SHORT}", env=SECRET_ENV, check=True)
    assert "parent /bin/sh -c" in plain.stdout and "mask var None" in plain.stdout
    secret = project.run("script=parent.py", "+env_vars.TOK=${oc.env:MY_TOKEN}", env=SECRET_ENV, check=True)
    assert f"parent {sys.executable} -I wrap" in secret.stdout, secret.stdout
    assert "mask var None" in secret.stdout  # the job does not keep the filter's variable


def test_secret_env_masks_literal_and_inherited_values(project: Project) -> None:
    project.write("show.py", "import os\nprint('lit', os.environ['LIT'], 'inh', os.environ['INHERITED_KEY'])\n")
    result = project.run("script=show.py", "+env_vars.LIT=literal-value", "secret_env=[LIT,INHERITED_KEY]",
                         env={"INHERITED_KEY": "inherited-value"}, check=True)
    assert "lit *** inh ***" in result.stdout
    (record,) = project.runs()
    assert "lit *** inh ***" in (project.workspace / "runs" / str(record["id"]) / "output.log").read_text()


def test_cancel_and_kill_keep_their_meaning_with_a_filter(project: Project) -> None:
    project.write("trap.py", TRAP)
    run_id = project.run("--detach", "script=trap.py", "+env_vars.TOK=${oc.env:MY_TOKEN}", env=SECRET_ENV,
                         check=True).stdout.strip()
    log = project.workspace / "runs" / run_id / "output.log"
    deadline = time.monotonic() + 60
    while "ready" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Canceled" in project.run("runs", "cancel", run_id, check=True).stdout
    assert "got TERM ***" in log.read_text()  # the job's own TERM handler ran; its output was drained, masked
    (record,) = project.runs()
    assert record["status"] == "Canceled" and record["exit_code"] == 143
    project.write("die.py", "import os, signal\nprint(os.environ['TOK'], flush=True)\n"
                            "os.kill(os.getpid(), signal.SIGKILL)\n")
    died = project.run("script=die.py", "+env_vars.TOK=${oc.env:MY_TOKEN}", env=SECRET_ENV)
    assert "***" in died.stdout and SECRET not in died.stdout
    record = next(r for r in project.runs() if r["id"] != run_id)
    assert record["exit_code"] == 137 and record["reason"] == "killed by SIGKILL (exit code 137)"
