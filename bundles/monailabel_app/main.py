"""MONAI Label app: the phase synthesiser of this repository (``scripts.label.infer.PhaseSynthesisTask``).

Start it with ``python -m scripts.label.compat start_server --app bundles/monailabel_app --studies DIR``
(MONAI Label's ``start_server`` with its arguments; see README.md). ``--conf`` keys: ``ckpt_path`` (phase
model, default the shipped one), ``num_samples``, ``seed``, ``num_inference_steps``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the app folder lives in the repository; its code is the repository's package
    sys.path.insert(0, str(REPO))

from scripts.label.compat import alias_pydicom_uids  # noqa: E402

alias_pydicom_uids()

from monailabel.interfaces.app import MONAILabelApp  # noqa: E402

from scripts.label.infer import PhaseSynthesisTask  # noqa: E402


class PhaseSynthesisApp(MONAILabelApp):
    """Inference only: the phase model trains on paired complex data (``configs/train.json``), not on the
    image/label pairs a MONAI Label datastore holds."""

    def __init__(self, app_dir, studies, conf):
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="mri_phase_synthesis",
                         description="Realistic MRI phase for magnitude-only images", version="0.1")

    def init_infers(self):
        keys = {"ckpt_path": str, "num_samples": int, "seed": int, "num_inference_steps": int}
        kwargs = {k: cast(self.conf[k]) for k, cast in keys.items() if self.conf.get(k)}
        return {"phase_synthesis": PhaseSynthesisTask(**kwargs)}

    def init_trainers(self):
        return {}
