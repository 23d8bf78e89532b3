"""The self-improvement of one sample: critique → revision chains, the AI judge, preference pairs.

Talks to models only through `policies.serving.Generator`.
"""
