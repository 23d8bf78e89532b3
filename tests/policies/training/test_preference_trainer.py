import math

import pytest
import torch
from safetensors.torch import load_file

from policies.adapters import LoraSettings, attach_trainable_adapter, save_adapter
from policies.models import load_model
from policies.training.data import (
    EncodedPair,
    PreferenceExample,
    collate,
    completion_logps,
    completion_text,
    encode_pair,
)
from policies.training.preference import PreferenceTrainer
from policies.training.reference_cache import ReferenceCache
from policies.training.settings import LossType, PreferenceSettings
from policies.training.shared_prefix_attention import Segment, SegmentIndex, use_shared_prefix_attention

EXAMPLES = [
    PreferenceExample([{"role": "user", "content": f"Question {i}?"}], chosen=f"A careful answer {i}.",
                      rejected=f"No {i}.", target=0.8)
    for i in range(6)
]


def test_collate_masks_only_completion_tokens():
    pairs = [EncodedPair([1, 2], [3, 4, 5], [6]), EncodedPair([7], [8], [9, 10])]
    batch = collate(pairs, pad_id=0)
    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 4, 5], [7, 8, 0, 0, 0],  # chosen halves
        [1, 2, 6, 0, 0], [7, 9, 10, 0, 0],  # rejected halves
    ]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]


def test_completion_includes_the_end_of_turn_marker(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    text = completion_text(tokenizer, [{"role": "user", "content": "Q"}], "Answer.")
    assert text.startswith("Answer.") and "<|im_end|>" in text


def test_truncation_keeps_completions_and_drops_oldest_prompt_tokens(tiny_model_dir):
    _, tokenizer = load_model(tiny_model_dir, device="cpu")
    long = PreferenceExample([{"role": "user", "content": "word " * 200}], "yes " * 100, "no")
    pair = encode_pair(tokenizer, long, max_length=64)
    assert len(pair.prompt) + len(pair.chosen) <= 64 and len(pair.prompt) + len(pair.rejected) <= 64
    assert len(pair.chosen) == 32


def test_dpo_step_changes_adapter_and_starts_at_log_two(tiny_model_dir, tmp_path):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    settings = PreferenceSettings(beta=0.1, learning_rate=1e-2, epochs=2, batch_size=4, max_length=64)
    result = PreferenceTrainer(model, tokenizer, settings).fit(EXAMPLES)
    # A fresh LoRA adapter is the identity, so the policy equals the reference: loss = -log sigmoid(0) = log 2.
    assert result.metrics["loss_before"] == pytest.approx(math.log(2), abs=1e-5)
    assert result.metrics["reward_margin_before"] == pytest.approx(0.0, abs=1e-5)
    assert len(result.steps) == 4  # 2 batches x 2 epochs
    assert all(math.isfinite(s.metrics["loss"]) for s in result.steps)
    assert result.metrics["loss_after"] < result.metrics["loss_before"]
    assert result.metrics["reward_margin_after"] > 0
    saved = load_file(save_adapter(model, tmp_path / "v1") / "adapter_model.safetensors")
    lora_b = [t for name, t in saved.items() if "lora_B" in name]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # B starts at zero: non-zero means trained


def test_gradient_accumulation_takes_one_step_per_window(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    settings = PreferenceSettings(epochs=1, batch_size=2, grad_accum=2, max_length=64)
    result = PreferenceTrainer(model, tokenizer, settings).fit(EXAMPLES)
    assert len(result.steps) == 2  # 3 micro-batches: one full window, then the remainder


def test_reference_is_the_base_model_with_the_adapter_disabled(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    base_model, _ = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)  # make the adapter matter before training starts
    trainer = PreferenceTrainer(model, tokenizer, PreferenceSettings(max_length=64, max_steps=1))
    pairs = [encode_pair(tokenizer, e, 64) for e in EXAMPLES]
    with torch.no_grad():
        policy_chosen, _ = completion_logps(model, collate(pairs, tokenizer.pad_token_id))
        base_chosen, _ = completion_logps(base_model, collate(pairs, tokenizer.pad_token_id))
    result = trainer.fit(EXAMPLES)
    # `kl` is mean(log pi - log pi_ref) over chosen completions: pi_ref must be the untouched base model.
    assert result.metrics["kl_before"] == pytest.approx((policy_chosen - base_chosen).mean().item(), abs=1e-4)
    assert abs(result.metrics["kl_before"]) > 1e-3


def test_no_pairs_is_a_clear_error(tiny_model_dir):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    model = attach_trainable_adapter(model, LoraSettings(r=4, alpha=8))
    with pytest.raises(ValueError, match="at least one preference pair"):
        PreferenceTrainer(model, tokenizer, PreferenceSettings()).fit([])


def fresh_policy(tiny_model_dir, seed: int = 0):
    model, tokenizer = load_model(tiny_model_dir, device="cpu")
    torch.manual_seed(seed)  # LoRA's A matrices are random: the same seed gives the same starting adapter
    return attach_trainable_adapter(model, LoraSettings(r=4, alpha=8)), tokenizer


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("n", "split"), [(8, (1, 8)), (7, (3, 3))], ids=["8x1", "uneven-3-3-1"])
def test_accumulated_micro_batches_equal_one_big_batch(tiny_model_dir, n, split):
    """n pairs in one window, as micro-batches of `split[0]` (the last one shorter when uneven, e.g. 3, 3, 1),
    step exactly like one batch of n: each micro-batch's mean loss is weighted by its share of the window."""
    examples = [PreferenceExample([{"role": "user", "content": f"Q{i} " * (i + 1)}], f"yes {i}", "no " * (i + 1))
                for i in range(n)]
    results = []
    for batch_size, grad_accum in ((n, 1), split):
        model, tokenizer = fresh_policy(tiny_model_dir)
        settings = PreferenceSettings(optimizer="sgd", learning_rate=0.5, batch_size=batch_size, grad_accum=grad_accum,
                                      max_steps=1, max_length=64, max_grad_norm=1e9)
        assert len(PreferenceTrainer(model, tokenizer, settings).fit(examples).steps) == 1
        results.append(trainable(model))
    one, accumulated = results
    assert any(one[n].abs().sum() > 0 for n in one if "lora_B" in n)
    for name in one:
        torch.testing.assert_close(accumulated[name], one[name], atol=1e-6, rtol=1e-4)


def test_precomputed_and_online_reference_train_identically(tiny_model_dir):
    results = []
    for reference in ("precompute", "online"):
        model, tokenizer = fresh_policy(tiny_model_dir)
        settings = PreferenceSettings(reference=reference, batch_size=2, max_steps=3, max_length=64, learning_rate=1e-2)
        PreferenceTrainer(model, tokenizer, settings).fit(EXAMPLES)
        results.append(trainable(model))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], atol=1e-6, rtol=1e-5)


def test_resumed_run_equals_uninterrupted_run(tiny_model_dir, tmp_path):
    settings = PreferenceSettings(batch_size=2, epochs=2, max_length=64, learning_rate=1e-2, checkpoint_every=1)
    model, tokenizer = fresh_policy(tiny_model_dir)
    PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "a").fit(EXAMPLES)
    uninterrupted = trainable(model)

    class Crash(Exception):
        pass

    def crash_at_step_4(step):
        if step.step == 4:  # mid-way through the second epoch, before step 4's checkpoint is written
            raise Crash

    model, tokenizer = fresh_policy(tiny_model_dir)
    with pytest.raises(Crash):
        PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "b").fit(EXAMPLES, crash_at_step_4)
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*")) == ["step-00000002", "step-00000003"]

    # A new process would start from a fresh adapter with a different random init: the checkpoint must win.
    model, tokenizer = fresh_policy(tiny_model_dir, seed=123)
    result = PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "b").fit(EXAMPLES)
    assert [s.step for s in result.steps] == [4, 5, 6]
    resumed = trainable(model)
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], atol=1e-6, rtol=1e-5)


def test_soft_labels_of_one_half_leave_a_fresh_policy_unchanged(tiny_model_dir):
    # With target p = 0.5 the soft-label DPO gradient at h = 0 is beta * (sigmoid(0) - p) = 0.
    undecided = [PreferenceExample(e.prompt, e.chosen, e.rejected, target=0.5) for e in EXAMPLES]
    model, tokenizer = fresh_policy(tiny_model_dir)
    before = trainable(model)
    settings = PreferenceSettings(soft_labels=True, optimizer="sgd", learning_rate=1.0, max_length=64, max_steps=1)
    PreferenceTrainer(model, tokenizer, settings).fit(undecided)
    for name, value in trainable(model).items():
        torch.testing.assert_close(value, before[name], atol=1e-7, rtol=0)


@pytest.mark.parametrize("loss", list(LossType))
def test_every_loss_raises_the_reward_margin_on_a_consistent_preference(tiny_model_dir, loss):
    model, tokenizer = fresh_policy(tiny_model_dir)
    before = trainable(model)
    settings = PreferenceSettings(loss=loss, batch_size=3, epochs=4, max_length=64, learning_rate=1e-2,
                                  label_smoothing=0.1 if loss in (LossType.CDPO, LossType.RDPO) else 0.0)
    result = PreferenceTrainer(model, tokenizer, settings).fit(EXAMPLES)
    assert len(result.steps) == 8
    assert all(math.isfinite(v) for s in result.steps for k, v in s.metrics.items() if k != "kl")
    assert any(not torch.equal(before[n], v) for n, v in trainable(model).items())
    # Direction, not only finiteness: the chosen answers gain on the rejected ones.
    assert result.metrics["reward_margin_after"] > result.metrics["reward_margin_before"] + 1e-3


def test_resume_with_dropout_and_a_cosine_schedule_equals_the_uninterrupted_run(tiny_model_dir, tmp_path):
    # Dropout draws from the RNG and the schedule changes the rate every step: both must be restored exactly.
    settings = PreferenceSettings(batch_size=2, epochs=2, max_length=64, learning_rate=1e-2, checkpoint_every=2,
                                  scheduler="cosine", warmup_steps=1)

    def policy(seed: int = 0):
        model, tokenizer = load_model(tiny_model_dir, device="cpu")
        torch.manual_seed(seed)
        return attach_trainable_adapter(model, LoraSettings(r=4, alpha=8, dropout=0.3)), tokenizer

    model, tokenizer = policy()
    PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "a").fit(EXAMPLES)
    uninterrupted = trainable(model)

    class Crash(Exception):
        pass

    def crash_at_step_3(step):
        if step.step == 3:
            raise Crash

    model, tokenizer = policy()
    with pytest.raises(Crash):
        PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "b").fit(EXAMPLES, crash_at_step_3)
    model, tokenizer = policy(seed=99)
    result = PreferenceTrainer(model, tokenizer, settings, checkpoint_dir=tmp_path / "b").fit(EXAMPLES)
    assert [s.step for s in result.steps] == [3, 4, 5, 6]
    for name, value in trainable(model).items():
        torch.testing.assert_close(value, uninterrupted[name], atol=1e-6, rtol=1e-5)


def test_chunked_completion_logps_equal_a_plain_log_softmax_with_gradients(tiny_model_dir, monkeypatch):
    import policies.training.data as data
    import policies.training.token_logps as token_logps

    monkeypatch.setattr(token_logps, "LOGIT_CHUNK", 7)  # several chunks, one of them partial
    model, tokenizer = fresh_policy(tiny_model_dir)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)
    batch = collate([encode_pair(tokenizer, e, 64) for e in EXAMPLES[:3]], tokenizer.pad_token_id)

    sums, counts = data.sequence_logps(model, batch)
    sums.sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    token = torch.log_softmax(logits, -1).gather(2, batch["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = batch["completion_mask"][:, 1:]
    plain = (token * mask).sum(-1)
    plain.sum().backward()

    torch.testing.assert_close(sums, plain, atol=1e-4, rtol=1e-5)
    assert counts.tolist() == mask.sum(-1).tolist()
    for name, param in model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(ours[name], param.grad, atol=1e-5, rtol=1e-4)


def test_shared_prefix_packing_lays_out_positions_and_masks_by_hand():
    from policies.training.data import pack_shared_prefix

    # Pair 0: prompt [1, 2], chosen [3, 4], rejected [5]; pair 1: prompt [6], chosen [7], rejected [8, 9].
    pairs = [EncodedPair([1, 2], [3, 4], [5]), EncodedPair([6], [7], [8, 9])]
    batch = pack_shared_prefix(pairs, pad_id=0, row_budget=16)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9]]
    # The rejected completion continues from the prompt's end, as if the chosen one were absent.
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2, 0, 1, 1, 2]]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask[4] == [1, 1, 0, 0, 1, 0, 0, 0, 0]  # rejected 5 sees the prompt and itself, not chosen 3, 4
    assert mask[3] == [1, 1, 1, 1, 0, 0, 0, 0, 0]  # chosen 4 sees the prompt, chosen 3 and itself
    assert mask[8] == [0, 0, 0, 0, 0, 1, 0, 1, 1]  # pair 1's rejected 9 never sees pair 0
    # Completion tokens and the position whose hidden state predicts each: token 0 by the prompt's last token.
    assert batch.targets.tolist() == [3, 4, 5, 7, 8, 9]
    assert batch.sources.tolist() == [1, 2, 1, 5, 5, 7]
    assert batch.segment.tolist() == [0, 0, 1, 2, 3, 3]
    assert batch.tokens == 9
    assert batch.layout == (Segment(0, 0, 2, 2, 1), Segment(0, 5, 1, 1, 2))
    # The same layout as gather indices for the segmented attention: each pair's prompt + chosen and prompt +
    # rejected as right-padded rows; the prompt is written back from the chosen rows only.
    index = SegmentIndex.build(batch.layout, width=9)
    assert index.chosen.tolist() == [[0, 1, 2, 3], [5, 6, 0, 0]]
    assert index.rejected.tolist() == [[0, 1, 4], [5, 7, 8]]
    assert index.written.tolist() == [True] * 6 + [False, False] + [False, False, True, False, True, True]
    assert index.positions.tolist() == [0, 1, 2, 3, 5, 6, 4, 7, 8]
    # A row budget smaller than both pairs puts each in its own row, padded at the end.
    split = pack_shared_prefix(pairs, pad_id=0, row_budget=5)
    assert split.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert split.layout == (Segment(0, 0, 2, 2, 1), Segment(1, 0, 1, 1, 2))


@pytest.mark.parametrize("segmented", [False, True], ids=["dense-mask", "segmented-attention"])
def test_prefix_sharing_gives_the_unshared_log_probs_and_gradients(tiny_model_dir, segmented, monkeypatch):
    """Correctness first: one packed prompt for chosen and rejected must equal scoring them separately, both with
    the dense block mask (any attention implementation) and with the per-segment attention the trainer uses."""
    from transformers import AttentionInterface

    from policies.training import shared_prefix_attention as attention
    from policies.training.data import pack_shared_prefix, sequence_logps, shared_prefix_logps

    segmented_calls = []

    def spy(*args, **kwargs):
        segmented_calls.append(kwargs.get("shared_prefix_index") is not None)
        return attention.shared_prefix_attention(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, attention.NAME, spy)
    model, tokenizer = fresh_policy(tiny_model_dir)
    assert model.config._attn_implementation == "sdpa"
    if segmented:
        assert use_shared_prefix_attention(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # an adapter that matters, so gradients reach every LoRA matrix
    examples = [PreferenceExample([{"role": "user", "content": "Q " * (3 * i + 1)}], "yes " * (i + 2), "no " * (5 - i))
                for i in range(5)]
    pairs = [encode_pair(tokenizer, e, 64) for e in examples]
    targets = torch.tensor([1.0, -0.5, 2.0, 0.3, -1.0])

    def gradients(chosen, rejected):
        model.zero_grad()
        (targets @ chosen + targets.flip(0) @ rejected).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    sums, counts = sequence_logps(model, collate(pairs, tokenizer.pad_token_id))
    plain_counts = counts
    plain = gradients(sums[:5], sums[5:])
    for budget in (400, 60):  # all pairs in one row; about one pair per row
        chosen, rejected, chosen_len, rejected_len = shared_prefix_logps(
            model, pack_shared_prefix(pairs, tokenizer.pad_token_id, budget))
        torch.testing.assert_close(chosen, sums[:5], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(rejected, sums[5:], atol=1e-4, rtol=1e-5)
        assert chosen_len.tolist() == plain_counts[:5].tolist() and rejected_len.tolist() == plain_counts[5:].tolist()
        shared = gradients(chosen, rejected)
        for name, grad in plain.items():
            torch.testing.assert_close(shared[name], grad, atol=1e-5, rtol=1e-4)
    # The segmented run really went through the per-segment path (2 layers x 2 budgets), the plain one did not.
    assert segmented_calls.count(True) == (4 if segmented else 0)


def test_a_pair_scored_by_an_earlier_run_is_not_scored_again(tiny_model_dir, tmp_path):
    """The run's reference cache: a later run (a replay plus new pairs, another adapter) computes only the new
    pairs' reference log-probs, and trains as if it had computed them all."""
    settings = PreferenceSettings(batch_size=2, max_steps=2, max_length=64, learning_rate=1e-2)
    cache = ReferenceCache(tmp_path / "ref", tiny_model_dir, "float32", "cpu", "auto")
    model, tokenizer = fresh_policy(tiny_model_dir)
    first = PreferenceTrainer(model, tokenizer, settings, reference_cache=cache)
    first.fit(EXAMPLES[:4])
    assert first.reference_scored == 4 and len(list((tmp_path / "ref").glob("*.json"))) == 4

    later = [EXAMPLES[4], EXAMPLES[1], EXAMPLES[5], EXAMPLES[3]]  # two new pairs, two replayed
    results = []
    for reference_cache in (cache, None):
        model, tokenizer = fresh_policy(tiny_model_dir, seed=7)
        trainer = PreferenceTrainer(model, tokenizer, settings, reference_cache=reference_cache)
        trainer.fit(later)
        results.append((trainer.reference_scored, trainer.reference, trainable(model)))
    (cached_scored, cached_ref, cached), (fresh_scored, fresh_ref, fresh) = results
    assert (cached_scored, fresh_scored) == (2, 4)
    torch.testing.assert_close(cached_ref, fresh_ref, atol=1e-5, rtol=1e-6)
    for name in fresh:
        torch.testing.assert_close(cached[name], fresh[name], atol=1e-6, rtol=1e-5)
    # Another dtype's or compute precision's log-probs are another key: nothing is read back.
    for dtype, precision in (("bfloat16", "auto"), ("float32", "bf16")):
        other = ReferenceCache(tmp_path / "ref", tiny_model_dir, dtype, "cpu", precision)
        assert other.get(first.pairs) == {}
    assert cache.get(first.pairs).keys() == {0, 1, 2, 3}
