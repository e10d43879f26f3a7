"""Neural networks (``components/``: plain ``nn.Module``), their LightningModules (``*_module.py``)
and the released checkpoints (``released/<name>/`` with a model card), loaded by name with
:func:`load`."""

from skyvar.models.registry import RELEASES, checkpoint_path, load

__all__ = ["RELEASES", "checkpoint_path", "load"]
