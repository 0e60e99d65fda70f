"""eval.caches and eval.stream under SIGTERM: the cache is saved at the current image and the
rerun continues from it; without a cache the pass stops with nothing to save."""

import numpy as np
import pytest
import torch

from eval.caches import StreamCache
from eval.kmeans import collect_image_prototypes
from eval.saliency_source import SaliencySource


@pytest.mark.parametrize("cached", [True, False])
def test_sigterm_saves_the_cache_at_that_image_and_the_rerun_equals_a_full_pass(synthetic, tmp_path, cached):
    import os
    import signal

    from maskcontrast.preemption import Preempted

    ds, model = synthetic
    full = collect_image_prototypes(model, ds, SaliencySource("model"), progress=False)
    path = tmp_path / "c" / "prototypes.pt"
    real, calls = model.run, {"n": 0}

    def signal_at_image_four(images, **kwargs):
        for item in real(images, **kwargs):
            calls["n"] += 1
            if calls["n"] == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            yield item

    model.run = signal_at_image_four
    with pytest.raises(Preempted) as info:
        collect_image_prototypes(
            model, ds, SaliencySource("model"), cache=StreamCache(path, {"a": 1}) if cached else None, progress=False
        )
    assert info.value.code == 143
    if not cached:
        assert "after 6 images" in str(info.value) and "nothing needed saving" in str(info.value)
        return
    assert torch.load(path, weights_only=True)["done"] == 4 and "after 4 images" in str(info.value)
    model.run = real
    resumed = collect_image_prototypes(
        model, ds, SaliencySource("model"), cache=StreamCache(path, {"a": 1}), progress=False
    )
    np.testing.assert_array_equal(resumed.fg_hist, full.fg_hist)
    np.testing.assert_array_equal(resumed.has_proto, full.has_proto)


def test_the_checkpoint_fingerprint_tells_the_dino_teacher_from_the_student(tmp_path):
    from eval.caches import checkpoint_fingerprint

    f = tmp_path / "dino.pth"
    f.write_bytes(b"x")
    assert checkpoint_fingerprint(f) == checkpoint_fingerprint(f, "teacher")
    assert checkpoint_fingerprint(f, "student") != checkpoint_fingerprint(f)
