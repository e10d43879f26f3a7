"""skyvar's Hydra config tree, shipped as package data (``pkg://skyvar.conf``).

Importing it registers the ``${skyvar_path:...}`` resolver the configs use (:mod:`skyvar.paths`)."""

import skyvar.paths  # noqa: F401
