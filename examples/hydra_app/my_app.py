"""Hydra's tutorial app (config groups), unchanged but for returning a value: each job returns its db port."""

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


@hydra.main(version_base=None, config_path="conf", config_name="config")
def my_app(cfg: DictConfig) -> int:
    print(OmegaConf.to_yaml(cfg))
    log.info(f"connecting to {cfg.db.driver} as {cfg.db.user}")
    return int(cfg.db.port)


if __name__ == "__main__":
    my_app()
