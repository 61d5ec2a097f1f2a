"""``mltrain plan``: stages, fingerprints, cache state; it changes nothing."""

from __future__ import annotations

import json

from conftest import Project


def test_plan_prints_stages_and_changes_nothing(project: Project) -> None:
    result = project.run("plan", "script=train.py", check=True)
    for stage in ("SNAPSHOT", "ENVIRONMENT", "STAGE_CODE", "LAUNCH", "MONITOR", "COLLECT", "FINALIZE"):
        assert stage in result.stdout
    assert not project.workspace.exists()


def test_plan_json_reflects_cache(project: Project) -> None:
    before = json.loads(project.run("plan", "--json", "script=train.py", check=True).stdout)
    stages = {s["name"]: s for s in before["stages"]}
    assert stages["SNAPSHOT"]["cached"] is False
    assert stages["SNAPSHOT"]["details"]["files"] == 1
    assert stages["STAGE_CODE"]["cached"] is False
    project.run("script=train.py", check=True)
    after = {
        s["name"]: s for s in json.loads(project.run("plan", "--json", "script=train.py", check=True).stdout)["stages"]
    }
    assert after["SNAPSHOT"]["cached"] is True
    assert after["SNAPSHOT"]["fingerprint"] == stages["SNAPSHOT"]["fingerprint"]
    assert after["STAGE_CODE"]["cached"] is True
    project.write("train.py", "print('changed')\n")
    changed = {
        s["name"]: s for s in json.loads(project.run("plan", "--json", "script=train.py", check=True).stdout)["stages"]
    }
    assert changed["SNAPSHOT"]["fingerprint"] != stages["SNAPSHOT"]["fingerprint"]
    assert changed["SNAPSHOT"]["cached"] is False


def test_plan_does_not_build_a_venv(project: Project, cache_dir) -> None:  # type: ignore[no-untyped-def]
    result = json.loads(
        project.run(
            "plan",
            "--json",
            "script=train.py",
            "environment=venv",
            'environment.packages=["plan-only-pkg==1.0"]',
            check=True,
        ).stdout
    )
    env_stage = next(s for s in result["stages"] if s["name"] == "ENVIRONMENT")
    assert env_stage["cached"] is False
    envs = cache_dir / "envs"
    assert not envs.exists() or not any(
        p.name.startswith("venv-" + env_stage["fingerprint"][:24]) for p in envs.iterdir()
    )
