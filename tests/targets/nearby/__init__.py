"""A compute target defined only here, in the test folder: what "a target is one folder plus one registry line" means.

``config.py`` and ``executor.py`` are the whole target; the registry line is
``mltrain.targets.register("nearby", "nearby", config="NearbyCompute", executor="NearbyExecutor")``
(``tests/targets/test_plugin_target.py`` runs the CLI with it), and its yaml lives in the test project's
``conf/compute/nearby.yaml``. No file of mltrain is edited for it.
"""
