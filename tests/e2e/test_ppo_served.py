"""PPO whose rollouts come from the real vLLM server, serving the adapter being trained (slow).

Runs before test_vllm_server.py, whose last test stops the session's server.
"""

import math

import pytest

from policies.adapters import LoraSettings, attach_trainable_adapter
from policies.models import load_model
from policies.serving.vllm_client import VllmAdmin
from policies.training.ppo import PolicyWithValue, PPOTrainer, ServedRollouts
from policies.training.settings import PPOSettings

pytestmark = pytest.mark.slow


def test_ppo_rollouts_are_served_from_the_current_adapter(vllm_served, smollm2_dir, tmp_path):
    lm, tokenizer = load_model(smollm2_dir, device="cpu")
    model = PolicyWithValue(attach_trainable_adapter(lm, LoraSettings(r=8, alpha=16)))
    admin = VllmAdmin(vllm_served.url)
    served = ServedRollouts(vllm_served.url, model.lm, tmp_path / "rollout-adapters", prefix="ppo-test")
    seen = []

    def on_step(step):
        seen.append(sorted(name for name in admin.served() if name.startswith("ppo-test")))

    def shorter_is_better(rollouts):
        return [-len(r.completion_ids) / 10 for r in rollouts]

    prompts = [[{"role": "user", "content": f"Name a colour ({i})."}] for i in range(4)]
    settings = PPOSettings(rollouts=2, rollout_batch_size=4, max_new_tokens=12, batch_size=4, learning_rate=1e-3)
    steps = PPOTrainer(model, tokenizer, settings, shorter_is_better, served=served).fit(prompts, on_step).steps

    # Each rollout batch came from the adapter saved just before it, and only that one was loaded.
    assert seen == [["ppo-test-step0"], ["ppo-test-step1"]]
    assert (tmp_path / "rollout-adapters" / "step-1" / "adapter_model.safetensors").is_file()
    assert not [name for name in admin.served() if name.startswith("ppo-test")]  # unloaded at the end
    assert all(math.isfinite(s.metrics[k]) for s in steps for k in ("reward_mean", "kl", "entropy"))
