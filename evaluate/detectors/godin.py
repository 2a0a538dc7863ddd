"""G-ODIN's test score, for classifiers trained with ``train.method: godin``."""

from __future__ import annotations

from sio.evaluate.detectors.base import DETECTORS, DetectorError, InputDetector


@DETECTORS.register("godin")
class GODIN(InputDetector):
    """G-ODIN (Hsu et al., "Generalized ODIN", CVPR 2020), DeConf-C: max_i h_i(x~) with
    x~ = x + eps * sign(grad_x max_i h_i(x)) on pixels in [0, 1], sign(0) = +1, h the cosine
    head; eps is the checkpoint's ``train.godin.epsilon`` (0.0025). Not in the default list:
    it needs a classifier with the G-ODIN head and refuses any other."""

    def score_batch(self, model, images):
        if not hasattr(model, "godin_score"):
            raise DetectorError(
                "detector godin needs a classifier trained with train.method: godin "
                "(its checkpoint's head is 'godin')"
            )
        return model.godin_score(images).double().cpu().numpy()
