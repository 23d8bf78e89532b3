"""One iteration: its inputs, context and engines, the stages in order, the vLLM-served policies."""
