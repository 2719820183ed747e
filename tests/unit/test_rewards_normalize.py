"""Named normalisations against hand-computed values."""

import math

import pytest
import torch

from reward_models import Normalization


def test_none_and_zscore():
    s = torch.tensor([1.0, 3.0])
    assert torch.equal(Normalization()(s), s)
    torch.testing.assert_close(Normalization("zscore", mean=2.0, std=0.5)(s), torch.tensor([-2.0, 2.0]))


def test_group_zscore_uses_each_groups_population_std():
    s = torch.tensor([1.0, 3.0, 10.0, 5.0, 7.0])
    groups = torch.tensor([0, 0, 1, 2, 2])
    # group 0: mean 2, std 1 -> -1, 1; group 1 alone -> 0; group 2: mean 6, std 1 -> -1, 1
    out = Normalization("group_zscore", eps=0.0)(s, groups)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, 0.0, -1.0, 1.0]))


def test_win_rate_counts_ties_half_and_lonely_samples_half():
    s = torch.tensor([1.0, 2.0, 2.0, 3.0, 9.0])
    groups = torch.tensor([0, 0, 0, 0, 1])
    # sample 0 beats none of 3 -> 0; samples 1, 2 beat one and tie one -> 1.5/3; sample 3 beats all -> 1
    out = Normalization("win_rate")(s, groups)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 0.5, 1.0, 0.5]))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown normalisation 'minmax'"):
        Normalization("minmax")
    with pytest.raises(ValueError, match="needs mean= and std="):
        Normalization("zscore", mean=1.0)
    with pytest.raises(ValueError, match="positive"):
        Normalization("zscore", mean=0.0, std=0.0)
    with pytest.raises(ValueError, match="only used by 'zscore'"):
        Normalization("win_rate", mean=1.0)
    with pytest.raises(ValueError, match="needs group ids"):
        Normalization("group_zscore")(torch.zeros(2))
    assert math.isclose(Normalization("zscore", mean=0, std=2)(torch.tensor([1.0])).item(), 0.5)
