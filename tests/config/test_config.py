"""Composition: packaged groups, the project's own ./conf, Hydra's usual flags."""

from __future__ import annotations

import json
import sys

from conftest import Project, assert_one_line_error


def test_project_conf_adds_a_compute_option(project: Project) -> None:
    project.write("conf/compute/my_box.yaml", "type: local\ncancel_grace: 3.5\n")
    result = project.run("script=train.py", "compute=my_box", "--cfg", "job", check=True)
    assert "cancel_grace: 3.5" in result.stdout
    project.run("script=train.py", "compute=my_box", check=True)
    assert project.runs()[0]["status"] == "Completed"


def test_project_conf_overrides_a_packaged_file(project: Project) -> None:
    project.write("conf/environment/user_managed.yaml", f"type: user_managed\ninterpreter: {sys.executable}\n")
    result = project.run("script=train.py", "--cfg", "job", check=True)
    assert f"interpreter: {sys.executable}" in result.stdout


def test_config_dir_from_environment_variable(project: Project, tmp_path) -> None:  # type: ignore[no-untyped-def]
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "compute").mkdir(parents=True)
    (elsewhere / "compute" / "far.yaml").write_text("type: local\ncancel_grace: 7.0\n")
    result = project.run(
        "script=train.py", "compute=far", "--cfg", "job", env={"MLTRAIN_CONFIG_DIR": str(elsewhere)}, check=True
    )
    assert "cancel_grace: 7.0" in result.stdout


def test_user_option_with_typo_is_caught(project: Project) -> None:
    project.write("conf/compute/typo.yaml", "type: local\ncancel_grase: 3\n")
    assert_one_line_error(project.run("script=train.py", "compute=typo"), "compute.cancel_grase", "unknown key")


def test_user_option_with_wrong_type(project: Project) -> None:
    project.write("conf/environment/bad.yaml", "type: venv\npackages: notalist\n")
    assert_one_line_error(project.run("script=train.py", "environment=bad"), "environment.packages")


def test_config_name_flag(project: Project) -> None:
    project.write("conf/exp1.yaml", "defaults:\n  - config\n  - _self_\nscript: train.py\nparams:\n  lr: 0.3\n")
    result = project.run("-cn", "exp1", check=True)
    assert '"--lr", "0.3"' in result.stdout
    assert_one_line_error(project.run("-cn", "nope"), "nope")


def test_cfg_and_info_flags(project: Project) -> None:
    cfg = project.run("script=train.py", "params.lr=0.01", "--cfg", "job", check=True)
    assert "lr: 0.01" in cfg.stdout and "script: train.py" in cfg.stdout
    assert not project.workspace.exists()  # showing config runs nothing
    info = project.run("script=train.py", "--info", "searchpath", check=True)
    assert "pkg://mltrain.conf" in info.stdout
    assert "mltrain-project" not in info.stdout  # no ./conf, nothing prepended
    project.write("conf/compute/mine.yaml", "type: local\n")
    info = project.run("script=train.py", "--info", "searchpath", check=True)
    lines = info.stdout.splitlines()
    project_line = next(i for i, line in enumerate(lines) if "mltrain-project" in line)
    packaged_line = next(i for i, line in enumerate(lines) if "pkg://mltrain.conf" in line)
    assert project_line < packaged_line  # the project's conf wins


def test_shell_completion(project: Project) -> None:
    install = project.run("-sc", "install=bash", check=True)
    assert "complete" in install.stdout
    query = project.run("-sc", "query=bash", env={"COMP_LINE": "mltrain comp", "COMP_POINT": "12"}, check=True)
    assert "compute=" in query.stdout


def test_hydra_style_params(project: Project) -> None:
    result = project.run(
        "script=train.py", "framework.args_style=hydra", "params.lr=0.1", "+params.opt.name=adam", check=True
    )
    argv = json.loads(result.stdout.split("argv ", 1)[1].splitlines()[0])
    assert argv == ["lr=0.1", "opt.name=adam", "hydra.run.dir=${oc.env:MLTRAIN_OUTPUT_DIR}/hydra"]  # Hydra's files kept


def test_secret_interpolation_is_not_stored(project: Project) -> None:
    project.write("secret.py", "import os\nprint('token', os.environ['TOKEN'], os.environ['TOKEN'][::-1])\n")
    result = project.run(
        "script=secret.py", "+env_vars.TOKEN=${oc.env:MY_TOKEN}", env={"MY_TOKEN": "s3cr3t"}, check=True
    )
    assert "token *** t3rc3s" in result.stdout  # it reached the script; printed as is, it is masked
    run_id = str(project.runs()[0]["id"])
    stored = (project.workspace / "runs" / run_id / "config.yaml").read_text()
    assert "s3cr3t" not in stored and "${oc.env:MY_TOKEN}" in stored


def test_help_and_version(project: Project) -> None:
    assert "mltrain runs list" in project.run("--help", check=True).stdout
    assert project.run("--version", check=True).stdout.startswith("mltrain ")


def test_config_dir_flag_for_submit_and_plan(project: Project) -> None:
    project.write("elsewhere/compute/far.yaml", "type: local\ncancel_grace: 7.0\n")
    project.run("-cd", "elsewhere", "script=train.py", "compute=far", check=True)
    assert project.runs()[0]["status"] == "Completed"
    plan = json.loads(project.run("plan", "--json", "-cd", "elsewhere", "script=train.py", "compute=far",
                                  check=True).stdout)
    assert plan["target"] == "local"
