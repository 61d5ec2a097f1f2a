"""Config presets every Hydra app sees (``hydra/launcher=mltrain_docker``...), through the search-path plugin."""
