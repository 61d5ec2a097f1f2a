"""What the masking tests of every target share: a job that prints its secrets every way, and the check."""

from __future__ import annotations

import base64
import textwrap

SECRET = "s3cr3t-Value/With+Stuff"
MULTI = "-----BEGIN KEY-----\nline-two-of-key\n-----END KEY-----"
SECRET_ENV = {"MY_TOKEN": SECRET, "MY_MULTI": MULTI, "MY_SHORT": "abc"}
SECRET_ARGS = ("script=job.py", "+env_vars.TOK=${oc.env:MY_TOKEN}", "+env_vars.MULTI=${oc.env:MY_MULTI}",
               "+env_vars.SHORT=${oc.env:MY_SHORT}")

JOB = textwrap.dedent(
    """
    import base64, os, sys, time
    tok = os.environ["TOK"]
    print("plain", tok, flush=True)
    sys.stdout.write("split " + tok[:7]); sys.stdout.flush(); time.sleep(0.3)
    print(tok[7:] + " end", flush=True)
    print("multi", os.environ["MULTI"], flush=True)
    print("b64", base64.b64encode(tok.encode()).decode(), flush=True)
    print("b64url", base64.urlsafe_b64encode(tok.encode()).decode(), flush=True)
    print("b64 inside", base64.b64encode(b"x" + tok.encode() + b"yz").decode(), flush=True)
    print("short", os.environ["SHORT"], file=sys.stderr, flush=True)
    print("::metric loss=0.25 step=1", flush=True)
    raise ValueError("bad token " + tok)
    """
)

TRAP = ("import os, signal, sys, time\n"
        "def term(*_):\n    print('got TERM', os.environ['TOK'], flush=True); sys.exit(143)\n"
        "signal.signal(signal.SIGTERM, term)\nprint('ready', flush=True)\n"
        "while True: time.sleep(0.05)\n")


def assert_masked(text: str) -> None:
    """``text`` shows JOB's output with every secret form as ***, and the 3-character value as it is."""
    assert SECRET not in text and "line-two-of-key" not in text and "BEGIN KEY" not in text, text
    raw = SECRET.encode()
    for form in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        assert form.decode().rstrip("=")[:-1] not in text, text
    inside = base64.b64encode(b"x" + raw + b"yz").decode()
    assert inside[2:(8 * (1 + len(raw))) // 6] not in text, text
    assert "plain ***" in text and "split *** end" in text and "multi ***" in text, text
    assert "b64 ***" in text and "b64url ***" in text and "b64 inside " in text, text
    assert "short abc" in text, text  # 3 characters: left alone
    assert "ValueError: bad token ***" in text, text
