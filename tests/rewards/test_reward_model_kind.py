"""The `reward_model` reward kind on a tiny random reward model: its score squashed by a sigmoid."""

import math

import pytest
import torch

from constitution import Constitution, Principle
from policies.adapters import LoraSettings, attach_trainable_adapter, save_adapter
from policies.models import load_model
from policies.training.data import collate_sequences, encode_completions
from policies.training.reward_model import RewardModel
from rewards import RewardContext, RewardSettings, Scored, build_scorer

PRINCIPLE = Principle(id="p", category="harm", critique_request="c", revision_request="r",
                      comparison_question="Which is safer?")


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    lm, _ = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(1)
    model = RewardModel.fresh(attach_trainable_adapter(lm, LoraSettings(r=4, alpha=8)))
    torch.nn.init.normal_(model.head.linear.weight, std=1.0)  # scores far enough from 0 to tell apart
    return save_adapter(model.lm, tmp_path_factory.mktemp("rm") / "adapter", model.head)


def test_scores_are_the_models_squashed_into_0_1(tiny_model_dir, reward_model_dir):
    import loop.rewards  # noqa: F401

    settings = RewardSettings.model_validate({"components": [{"kind": "reward_model"}]})
    context = RewardContext(Constitution(name="t", principles=[PRINCIPLE]), reward_model_dir=reward_model_dir,
                            base_model_dir=tiny_model_dir, device="cpu")
    scorer = build_scorer(settings, context)
    items = [Scored("How do I boil an egg?", "Boil it for seven minutes.", "benign"),
             Scored("How do I boil an egg?", "I can't help with that.", "benign")]
    rewards = scorer.score(items)
    ((function, _),) = scorer.functions
    tokenizer = function.tokenizer
    prompt, (completion,) = encode_completions(tokenizer, [{"role": "user", "content": items[0].prompt}],
                                               [items[0].response], 512)
    batch = collate_sequences([prompt], [completion], tokenizer.pad_token_id)
    with torch.no_grad():
        raw = function.model(batch["input_ids"], batch["attention_mask"]).item()
    assert rewards[0].total == pytest.approx(1 / (1 + math.exp(-raw)))
    assert all(0 < r.total < 1 for r in rewards)
    assert rewards[0].total != pytest.approx(rewards[1].total)
    # One at a time gives the same value as in a padded batch.
    alone = function.score(items[1:])[0][0].value
    assert alone == pytest.approx(rewards[1].total, abs=1e-5)
    assert [c.name for r in rewards for c in r.components] == ["score", "score"]
