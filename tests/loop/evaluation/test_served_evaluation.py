"""With `generation.backend: vllm-server` the evaluation's answers and verdicts come from the server, and the KL
is computed here on those answers: on a server that answers as the tiny model does, the stored answers and the
KL equal the in-process evaluation's."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from sqlalchemy import select
from transformers import AutoTokenizer

from loop.config.run import JudgeSettings, ModelSettings
from loop.evaluation.harness import Evaluator, EvaluatorSettings
from loop.evaluation.models import PolicyBank
from loop.evaluation.settings import EvalSet, EvaluationSettings
from loop.pipeline.vllm_backend import ServedEvaluation, judge_generator
from loop.store import EvalMetric, EvalResponse, Policy, Run, Store
from policies.serving.vllm_server import VllmServerSettings
from tests.fake_vllm import FakeVllm, FakeVllmServer

ROOT = Path(__file__).resolve().parents[3]


def random_adapter(model_dir: Path, target: Path) -> Path:
    """A LoRA adapter of the tiny model whose B matrices are random, so the policy differs from the base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    model.save_pretrained(target)
    return target


def run_folder(folder: Path, adapter: Path) -> Store:
    """A run with the base (v0) and one trained policy (v1)."""
    shutil.copytree(adapter, folder / "policies" / "v1")
    store = Store(f"sqlite:///{folder / 'cai.db'}")
    with store.session() as session:
        run = Run(name=folder.name, config={})
        session.add(run)
        session.flush()
        session.add_all([Policy(run_id=run.id, version=0), Policy(run_id=run.id, version=1, parent_version=0,
                                                                  adapter_path="policies/v1", trainer="dpo")])
    return store


def evaluator(store: Store, folder: Path, model_dir: Path, home: Path, served=None) -> Evaluator:
    harmful = ROOT / "data/eval/harmful.jsonl"
    helpful = ROOT / "data/eval/helpful.jsonl"
    evaluation = EvaluationSettings(per_set=2, max_new_tokens=6, refusal={"classifier": "lexical", "labels": None},
                                    violations=False, sets=[EvalSet(name="harmful", file=harmful, role="harmful"),
                                                            EvalSet(name="helpful", file=helpful, role="helpful")])
    settings = EvaluatorSettings(evaluation, ModelSettings(name=str(model_dir), device="cpu"), JudgeSettings(),
                                 home, 0)
    return Evaluator(settings, store, folder, 1, constitution=_constitution(), served=served)


def _constitution():
    from constitution import load_constitution

    return load_constitution(ROOT / "principles/default.yaml")


def answers_of(store: Store) -> dict[tuple[int, str, str], tuple[str, int]]:
    with store.session() as session:
        return {(r.policy_version, r.eval_set, r.prompt_id): (r.response, r.tokens)
                for r in session.scalars(select(EvalResponse))}


def metrics_of(store: Store) -> dict[str, float]:
    with store.session() as session:
        return {m.name: m.value for m in session.scalars(select(EvalMetric))}


def test_served_answers_and_their_kl_equal_the_in_process_ones(tiny_model_dir, tmp_path, monkeypatch):
    adapter = random_adapter(tiny_model_dir, tmp_path / "adapter")
    local = run_folder(tmp_path / "local", adapter)
    evaluator(local, tmp_path / "local", tiny_model_dir, tmp_path / "home").evaluate(1, 0)
    expected = answers_of(local)
    with local.session() as session:
        by_prompt = {(r.policy_version, r.prompt): r.response for r in session.scalars(select(EvalResponse))}

    def reply(model: str, messages: list[dict]) -> str:
        return by_prompt[(1 if "-v1-" in model else 0, messages[-1]["content"])]

    fake = FakeVllm(base=tiny_model_dir.name, reply=reply)
    with FakeVllmServer(fake) as server:
        settings = VllmServerSettings(url=server.url, backoff_s=0.01, retries=1)
        served = ServedEvaluation(settings, str(tiny_model_dir), "remote", None, None,
                                  judge_generator(settings, JudgeSettings(), str(tiny_model_dir)))
        remote = run_folder(tmp_path / "remote", adapter)

        def no_local_generation(*args, **kwargs):
            raise AssertionError("a served evaluation generated in-process")

        monkeypatch.setattr(PolicyBank, "generator", no_local_generation)
        evaluator(remote, tmp_path / "remote", tiny_model_dir, tmp_path / "home", served).evaluate(1, 0)

    served_answers = answers_of(remote)
    assert {k: text for k, (text, _) in served_answers.items()} == {k: text for k, (text, _) in expected.items()}
    # A server answers in text: its length is the text's own tokens (in-process, the generated ids'; the two
    # differ where special tokens were generated).
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert all(n == len(tokenizer(text, add_special_tokens=False)["input_ids"])
               for text, n in served_answers.values())
    models = {body["model"] for body in fake.chat_bodies()}
    assert tiny_model_dir.name in models and any("-v1-" in m for m in models)  # the base and the adapter answered
    assert any(body.get("logprobs") for body in fake.chat_bodies())  # and the server judged the win rates
    mine, theirs = metrics_of(remote), metrics_of(local)
    assert mine["kl_vs_reference"] > 1e-3  # the adapter moved the policy: the comparison below means something
    for name in ("kl_vs_reference", "kl_vs_previous", "kl_vs_reference_harmful", "kl_vs_reference_helpful"):
        assert mine[name] == pytest.approx(theirs[name], abs=1e-4)
    assert mine["base_answers_from_cache"] == 0  # another backend's answers are not reused
    local.dispose()
    remote.dispose()
