"""One resume policy for finetune and pretrain (common.resume): an option given must match the checkpoint's,
one not given is the checkpoint's; the Python API (given=None) gives every option."""

from __future__ import annotations

import pytest

from featcache.common.errors import FeatcacheError
from featcache.common.resume import check_resume_policy, resumed_settings
from featcache.finetune.options import FinetuneOptions, resumed_options
from featcache.heads.recipe import TrainRecipe


def test_settings_not_given_are_the_checkpoints():
    saved = {"lr": 0.01, "hidden": 64, "seed": 3}
    requested = {"lr": 0.001, "hidden": 256, "seed": 0, "new": 1}
    assert resumed_settings(saved, requested, {"lr"}) == {"lr": 0.001, "hidden": 64, "seed": 3, "new": 1}
    assert resumed_settings(saved, requested, None) == requested  # the Python API: every setting given


def test_finetune_takes_its_options_from_last_pt_where_not_given(tmp_path):
    first = FinetuneOptions(ckpt="e.ckpt", data=["train=a.h5"], targets=["log_g"], out=tmp_path, hidden=64,
                            recipe=TrainRecipe(lr=3e-4, max_epochs=5))
    again = FinetuneOptions(ckpt="e.ckpt", data=["train=a.h5"], targets=["log_g"], out=tmp_path, resume=True,
                            recipe=TrainRecipe(max_epochs=9), given={"ckpt", "data", "targets", "out", "resume",
                                                                     "max_epochs"})
    merged = resumed_options(again, first.as_dict())
    assert merged.hidden == 64 and merged.recipe.lr == 3e-4 and merged.recipe.max_epochs == 9
    assert resumed_options(FinetuneOptions(**{**again.__dict__, "given": None}), first.as_dict()).hidden == 256


def test_resume_and_overwrite_exclude_each_other():
    with pytest.raises(FeatcacheError, match="--resume and --overwrite exclude each other"):
        check_resume_policy(True, True)
