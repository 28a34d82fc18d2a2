"""cptlab's Hydra configs. The wheel ships this directory as the package `cptlab.conf` (pyproject.toml maps it),
so `pkg://cptlab.conf` finds the same configs in an installed wheel as in the checkout."""
