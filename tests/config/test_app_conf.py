"""mltrain in a project that is a Hydra app: the app's ./conf is the app's, mltrain's config lives apart."""

from __future__ import annotations

from conftest import Project, assert_one_line_error

APP = """import json

import hydra
from omegaconf import OmegaConf

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    print("APP", json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True))

if __name__ == "__main__":
    main()
"""


def make_app(project: Project) -> None:
    project.write("my_app.py", APP)
    project.write("conf/config.yaml", "defaults:\n  - db: mysql\n  - _self_\nlr: 0.1\n")
    project.write("conf/db/mysql.yaml", "driver: mysql\ntimeout: 5\n")


def test_the_apps_conf_is_left_to_the_app(project: Project) -> None:
    make_app(project)
    result = project.run("script=my_app.py", "framework.args_style=hydra", "--", "+db.extra=1", "~db.timeout",
                         "lr=${oc.env:APP_LR}", env={**project.env, "APP_LR": "0.5"})
    assert result.returncode == 0, result.stderr
    assert 'APP {"db": {"driver": "mysql", "extra": 1}, "lr": "0.5"}' in result.stdout  # ${oc.env:} resolved by the job
    (run,) = project.runs()
    outputs = project.workspace / "runs" / str(run["id"]) / "outputs" / "hydra"
    assert (outputs / ".hydra" / "config.yaml").is_file() and (outputs / "my_app.log").is_file()


def test_mltrains_own_config_goes_in_dot_mltrain_conf(project: Project) -> None:
    make_app(project)
    project.write(".mltrain/conf/compute/slow.yaml", "type: local\ncancel_grace: 4.5\n")
    result = project.run("script=my_app.py", "compute=slow", "--cfg", "job", check=True)
    assert "cancel_grace: 4.5" in result.stdout


def test_mltrain_groups_in_an_apps_conf_are_one_line(project: Project) -> None:
    make_app(project)
    project.write("conf/compute/mine.yaml", "type: local\n")
    assert_one_line_error(project.run("script=my_app.py"), "./conf is a Hydra app's config",
                          ".mltrain/conf/compute/")
