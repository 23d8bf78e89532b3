"""Rewards: functions that score a response to a prompt (its category and principle), registered by kind and
combined with weights; and the refusal detectors that grade the constitution's "refuses" checks. Torch-free at
import."""
