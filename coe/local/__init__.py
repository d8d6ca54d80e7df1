"""Run real expert models on this machine: the cached model folder and vLLM CPU servers."""
