"""The exported pairs are what TRL's DPOTrainer trains on: one step on a tiny model, straight from the file."""

import math

import pytest

from loop.operate.export import pair_records, write_pairs
from loop.store.database import open_run_store
from tests.loop.test_pair_sources import make_config, run_stages

pytest.importorskip("trl", reason="TRL is installed with the test extras")


def test_one_trl_dpo_step_on_the_exported_parquet(tmp_path, tiny_model_dir):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    run_stages(make_config(tmp_path, pairs={"source": "mixed", "sampler": {"length_tolerance": None}}), tmp_path)
    store = open_run_store(tmp_path, write=True)
    with store.session() as session:
        records = pair_records(session)
    store.dispose()
    path = write_pairs(records, tmp_path / "pairs.parquet", "parquet")
    data = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert len(data) == len(records) >= 4

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = {k: v.clone() for k, v in model.named_parameters()}
    config = DPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, max_length=128, max_steps=1,
                       learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                       disable_tqdm=True, dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model, args=config, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    # One step from a model that is its own reference: the DPO loss is log 2.
    assert len(losses) == 1 and losses[0] == pytest.approx(math.log(2), abs=1e-3)
    assert any(not torch.equal(before[k], v) for k, v in model.named_parameters())
