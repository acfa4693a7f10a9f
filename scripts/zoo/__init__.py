"""Model-zoo bundle of the phase synthesiser: ``python -m scripts.zoo --checkpoint PATH --output bundles/<name>``.

- :mod:`scripts.zoo.build`: the bundle folder (configs, weights, code, LICENSE) from a checkpoint;
- :mod:`scripts.zoo.card`: the model card (what the checkpoint is) and ``docs/README.md`` made from it;
- :mod:`scripts.zoo.metadata`: ``configs/metadata.json`` in the zoo's schema;
- :mod:`scripts.zoo.checks`: the model zoo's CI checks on a built bundle.

The command, the card and the layout are documented in ``bundles/README.md``. This sub-package is
not copied into bundles (it needs the project's ``configs/source/``).
"""

__all__ = ["BundleError"]


class BundleError(Exception):
    """A build refused for a reason that fits one line (a missing or mismatched checkpoint, a bad card or setting)."""
