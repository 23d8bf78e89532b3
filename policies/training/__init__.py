"""Training: losses as pure functions, the shared optimisation loop, the trainers (preference, SFT, reward model,
PPO, GRPO), their data, checkpoints and DeepSpeed configs, the child-process entry point and its launcher.

Run a trainer with `python -m policies.training SPEC.json` (see `policies.training.run`).
"""
