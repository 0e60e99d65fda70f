import numpy as np
import pytest
import torch

from maskcontrast.embeddings import mask_prototypes
from maskcontrast.prompt import (
    as_support_mask,
    combine_shots,
    foreground_probability,
    prototype_score,
    support_prototypes,
)


def test_as_support_mask_values():
    m = np.array([[0, 1, 7], [255, 0, 2]], np.uint8)
    np.testing.assert_array_equal(as_support_mask(m, (2, 3)).numpy(), [[0, 1, 1], [-1, 0, 1]])
    np.testing.assert_array_equal(as_support_mask(torch.tensor([[True, False]]), (1, 2)).numpy(), [[1, 0]])
    with pytest.raises(ValueError, match="support mask 3 has no foreground"):
        as_support_mask(np.array([[0, 255]]), (1, 2), index=3)


def test_support_prototypes_are_the_training_prototypes():
    torch.manual_seed(1)
    emb = torch.randn(1, 8, 5, 7)
    mask = torch.zeros(40, 56, dtype=torch.long)
    mask[5:30, 10:40] = 1
    mask[:3] = -1
    fg, bg = support_prototypes(emb, mask)
    ids = torch.where(mask == 1, 1, torch.where(mask == 0, 2, 0))  # object 1 = fg, object 2 = bg
    protos, owner = mask_prototypes(emb, ids[None])
    assert owner[:, 1].tolist() == [1, 2]
    torch.testing.assert_close(fg, protos[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bg, protos[1], atol=1e-5, rtol=1e-5)
    assert support_prototypes(emb, torch.ones(40, 56, dtype=torch.long))[1] is None


def test_scores_and_soft_map_by_hand():
    fg, bg = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # pixels (1, 0) and (0, 1), unnormalised
    score = prototype_score(emb, fg, bg)
    torch.testing.assert_close(score, torch.tensor([[[[1.0, -1.0]]]]))
    soft = foreground_probability(score, (1, 2), temperature=0.5)
    torch.testing.assert_close(soft, torch.sigmoid(torch.tensor([[[[2.0, -2.0]]]])))
    torch.testing.assert_close(combine_shots([fg, bg]), torch.tensor([0.5, 0.5]).sqrt())
    with pytest.raises(ValueError, match="temperature"):
        foreground_probability(score, (1, 2), temperature=0)
